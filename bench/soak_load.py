"""Mixed, steady load on every transport, for the footprint and soak runs.

What a busy household would send, a few times over, so leaks show within
minutes rather than days:

* UDP: ``--batteries`` batteries (own 127.0.0.x each) polling ``EM.GetStatus``
  ``--rate`` times a second;
* HTTP: ``--http-rate`` requests a second, each on a *new* connection
  (connection set-up and tear-down is the classic leak), cycling through
  EM/EMData/Shelly.GetStatus and /shelly;
* WebSocket: ``--ws`` subscribed clients reading NotifyStatus; one of them is
  replaced by a new connection every 10 s (subscribe/unsubscribe churn);
* Modbus TCP: one client reading the em and emdata input registers twice a
  second, reconnecting every minute.

Runs ``--duration`` seconds, then prints one JSON object of counts; errors
are counted, never fatal. ``--warmup`` seconds at the start of it run every
rate (and the subscriber count) ``--warmup-factor`` times higher: the
allocator's pools and free lists grow until they hold the load's working set,
which at the normal rates takes tens of minutes and would read as a leak in a
10-minute run (measured: at 5x the growth fell from 1.7 MiB in the first
minute to 0.4 MiB/h after ten).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import selectors
import socket
import struct
import threading
import time

from ws_clients import frame, frames, handshake

HTTP_PATHS = ("/rpc/EM.GetStatus?id=0", "/rpc/EMData.GetStatus?id=0", "/rpc/Shelly.GetStatus", "/shelly")


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.values[key] = self.values.get(key, 0) + n


def udp_batteries(port: int, batteries: int, rate: float, end: float, counts: Counts) -> None:
    socks = []
    for i in range(batteries):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.0.{i + 2}", 0))
        sock.connect(("127.0.0.1", port))
        sock.settimeout(0.5)
        socks.append(sock)
    period = 1.0 / rate / batteries
    seq = 0
    next_at = time.monotonic()
    while time.monotonic() < end:
        for sock in socks:
            seq += 1
            sock.send(b'{"id":%d,"method":"EM.GetStatus","params":{"id":0}}' % seq)
            try:
                reply = sock.recv(4096)
                counts.add("udp_ok" if b'"a_act_power"' in reply else "udp_bad")
            except OSError:
                counts.add("udp_lost")
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
    for sock in socks:
        sock.close()


def http_requests(port: int, rate: float, end: float, counts: Counts) -> None:
    n = 0
    next_at = time.monotonic()
    while time.monotonic() < end:
        path = HTTP_PATHS[n % len(HTTP_PATHS)]
        n += 1
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            conn.close()
            counts.add("http_ok" if response.status == 200 else f"http_{response.status}")
        except OSError:
            counts.add("http_error")
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))


def ws_clients(port: int, clients: int, end: float, counts: Counts) -> None:
    selector = selectors.DefaultSelector()
    n = 0

    def connect() -> socket.socket:
        nonlocal n
        n += 1
        sock = handshake("127.0.0.1", port, "/rpc")
        sock.sendall(frame(1, json.dumps({"id": 1, "src": f"soak-{n}", "method": "EM.GetStatus",
                                          "params": {"id": 0}}).encode()))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, bytearray())
        counts.add("ws_connects")
        return sock

    socks = [connect() for _ in range(clients)]
    churn_at = time.monotonic() + 10
    while time.monotonic() < end:
        for key, _ in selector.select(0.2):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                counts.add("ws_dropped")
                continue
            key.data.extend(data)
            for opcode, payload in frames(key.data):
                if opcode == 1:
                    counts.add("ws_notify" if b"Notify" in payload else "ws_reply")
                elif opcode == 9:
                    sock.setblocking(True)
                    sock.sendall(frame(10, payload))
                    sock.setblocking(False)
        if time.monotonic() >= churn_at and socks:
            churn_at += 10
            old = socks.pop(0)
            try:
                selector.unregister(old)
            except (KeyError, ValueError):
                pass
            old.sendall(frame(8, struct.pack("!H", 1000)))
            old.close()
            socks.append(connect())
    for sock in socks:
        sock.close()


def modbus_client(port: int, end: float, counts: Counts) -> None:
    tid = 0
    sock = None
    reconnect_at = 0.0
    while time.monotonic() < end:
        if sock is None or time.monotonic() >= reconnect_at:
            if sock is not None:
                sock.close()
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            reconnect_at = time.monotonic() + 60
            counts.add("modbus_connects")
        for address, count in ((1000, 40), (1160, 40)):
            tid = (tid + 1) & 0xFFFF
            sock.sendall(struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, address, count))
            try:
                head = sock.recv(9)
                body_len = struct.unpack(">HHH", head[:6])[2] - 3
                body = b""
                while len(body) < body_len:
                    body += sock.recv(body_len - len(body))
                counts.add("modbus_ok" if head[7] == 4 else "modbus_exception")
            except (OSError, struct.error):
                counts.add("modbus_error")
                sock.close()
                sock = None
                break
        time.sleep(0.5)
    if sock is not None:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--udp-port", type=int, required=True)
    parser.add_argument("--modbus-port", type=int)
    parser.add_argument("--batteries", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0, help="UDP polls per second per battery")
    parser.add_argument("--http-rate", type=float, default=10.0)
    parser.add_argument("--ws", type=int, default=10)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of the duration at higher rates")
    parser.add_argument("--warmup-factor", type=float, default=5.0)
    args = parser.parse_args()
    random.seed(1)
    counts = Counts()
    start = time.monotonic()
    warm = min(args.warmup, args.duration)
    if warm > 0:
        run_phase(args, start + warm, counts, args.warmup_factor, warm + 30)
    run_phase(args, start + args.duration, counts, 1.0, args.duration - warm + 30)
    print(json.dumps(counts.values))


def run_phase(args: argparse.Namespace, end: float, counts: Counts, k: float, timeout: float) -> None:
    """Every load at ``k`` times its rate (and subscriber count) until ``end``."""
    jobs = [
        (udp_batteries, (args.udp_port, args.batteries, args.rate * k, end, counts)),
        (http_requests, (args.http_port, args.http_rate * k, end, counts)),
        (ws_clients, (args.http_port, round(args.ws * k), end, counts)),
    ]
    if args.modbus_port:
        jobs.append((modbus_client, (args.modbus_port, end, counts)))
    threads = [threading.Thread(target=fn, args=fn_args, daemon=True) for fn, fn_args in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


if __name__ == "__main__":
    main()
