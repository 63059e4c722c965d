"""N WebSocket clients subscribed to NotifyStatus; records when each notification arrives.

Deliberately minimal (raw sockets, one epoll loop, RFC 6455 framing by hand):
the receive time is taken with ``time.time()`` right after ``recv`` returns,
before any parsing, and a client costs microseconds per message, so the
timestamps measure the server, not the client library. Each client sends one
``EM.GetStatus`` with a ``src`` (that subscribes it, as a real client), then
only reads; pings are answered. Of each NotifyStatus it keeps the arrival
time and ``total_act_power`` (a regex on the raw bytes, no JSON parse, so it stays
cheap), by which the runner matches it to the reading that caused it. After
``--duration`` seconds it writes ``{"clients": N, "arrivals": [[[t, total_act_power],
...] per client], "closed": k}`` as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import selectors
import socket
import struct
import time

TOTAL_POWER = re.compile(rb'"total_act_power":(-?[0-9.]+)')


def handshake(host: str, port: int, path: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the WebSocket handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head[:80]!r}")
    if head.split(b"\r\n\r\n", 1)[1]:
        raise ConnectionError("data before the first request")
    return sock


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payloads here are small)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    return header + mask + masked


def frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Pop every complete (unmasked, server) frame from ``buffer``."""
    out = []
    while len(buffer) >= 2:
        opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if len(buffer) < 4:
                break
            length = struct.unpack_from("!H", buffer, 2)[0]
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                break
            length = struct.unpack_from("!Q", buffer, 2)[0]
            offset = 10
        if len(buffer) < offset + length:
            break
        out.append((opcode, bytes(buffer[offset:offset + length])))
        del buffer[:offset + length]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/rpc")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    selector = selectors.DefaultSelector()
    socks = []
    for i in range(args.clients):
        sock = handshake(args.host, args.port, args.path)
        request = json.dumps({"id": 1, "src": f"bench-{i}", "method": "EM.GetStatus",
                              "params": {"id": 0}}).encode()
        sock.sendall(frame(1, request))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
        socks.append(sock)
    arrivals: list[list[tuple[float, float | None]]] = [[] for _ in socks]
    buffers = [bytearray() for _ in socks]
    closed = 0
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        for key, _ in selector.select(0.1):
            i = key.data
            sock = socks[i]
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            now = time.time()
            if not data:
                selector.unregister(sock)
                closed += 1
                continue
            buffers[i] += data
            for opcode, payload in frames(buffers[i]):
                if opcode == 1 and b'"method":"NotifyStatus"' in payload:
                    match = TOTAL_POWER.search(payload)
                    arrivals[i].append((now, float(match.group(1)) if match else None))
                elif opcode == 9:
                    sock.setblocking(True)
                    sock.sendall(frame(10, payload))
                    sock.setblocking(False)
                elif opcode == 8:
                    closed += 1
    for sock in socks:
        sock.close()
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump({"clients": args.clients, "arrivals": arrivals, "closed": closed}, handle)
    print(json.dumps({"clients": args.clients, "closed": closed,
                      "notifications": sum(len(a) for a in arrivals)}))


if __name__ == "__main__":
    main()
