"""UDP load generator: N batteries asking ``EM.GetStatus``, each from its own 127.0.0.x.

Battery ``i`` sends from ``127.0.0.(i+2)`` (Linux answers on all of
127.0.0.0/8), as real batteries each have their own address; the server keeps
a client per address. One process, non-blocking sockets and one epoll loop, so
the generator costs a few microseconds per request.

Modes:

* ``closed``: every battery keeps exactly one request in flight and sends the
  next one as soon as the answer arrives. Throughput = answers per second.
* ``paced``: every battery sends ``--rate`` requests per second, the batteries
  evenly staggered; latency under a realistic load.

Latency is send-to-receive, measured with ``time.perf_counter_ns`` in this
process, so it includes both kernels' loopback path and the generator's own
wake-up (the same for the echo baseline). A request unanswered for ``--timeout``
is counted lost and the battery moves on. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import selectors
import socket
import time

ID = re.compile(rb'"id":(\d+)')


def request(seq: int) -> bytes:
    return b'{"id":%d,"method":"EM.GetStatus","params":{"id":0}}' % seq


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batteries", type=int, default=1)
    parser.add_argument("--mode", choices=("closed", "paced"), default="closed")
    parser.add_argument("--rate", type=float, default=10.0, help="paced: polls per second per battery")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--timeout", type=float, default=0.5, help="a request is lost after this")
    args = parser.parse_args()
    if not 1 <= args.batteries <= 250:
        parser.error("--batteries: 1..250")

    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    for i in range(args.batteries):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.0.{i + 2}", 0))
        sock.connect((args.host, args.port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
        socks.append(sock)

    n = args.batteries
    seq = 0
    waiting = [-1] * n  # id in flight per battery (-1: none)
    sent_at = [0] * n
    latencies: list[int] = []
    sent = answered = lost = stray = 0
    clock = time.perf_counter_ns
    begin = clock()
    measure_from = begin + int(args.warmup * 1e9)
    end = measure_from + int(args.duration * 1e9)
    timeout_ns = int(args.timeout * 1e9)
    period = int(1e9 / args.rate)
    next_send = [begin + i * period // n for i in range(n)]
    closed = args.mode == "closed"
    usage0 = None

    def send(i: int, now: int) -> None:
        nonlocal seq, sent
        seq += 1
        waiting[i] = seq
        sent_at[i] = now
        socks[i].send(request(seq))
        if now >= measure_from:
            sent += 1

    if closed:
        for i in range(n):
            send(i, clock())
    last_sweep = clock()
    while True:
        now = clock()
        if usage0 is None and now >= measure_from:
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
        if now >= end:
            break
        if closed:
            wait = 0.05
        else:
            wait = max(0.0, (min(next_send) - now) / 1e9)
        for key, _ in selector.select(min(wait, 0.05)):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            i = key.data
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                got = clock()
                match = ID.search(data)
                if match is None or int(match.group(1)) != waiting[i]:
                    stray += 1  # a late answer to a request already counted lost
                    continue
                waiting[i] = -1
                if sent_at[i] >= measure_from and got < end:
                    latencies.append(got - sent_at[i])
                    answered += 1
                if closed:
                    send(i, got)
        now = clock()
        if not closed:
            for i in range(n):
                if now >= next_send[i]:
                    if waiting[i] != -1 and sent_at[i] >= measure_from:
                        lost += 1
                    send(i, now)
                    next_send[i] += period
        elif now - last_sweep > timeout_ns // 4:
            last_sweep = now
            for i in range(n):
                if now - sent_at[i] > timeout_ns:
                    if sent_at[i] >= measure_from:
                        lost += 1
                    send(i, now)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = 0.0
    if usage0 is not None:
        cpu = (usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime) / args.duration
    latencies.sort()

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        rank = max(1, min(len(latencies), int(-(-q * len(latencies) // 100))))
        return latencies[rank - 1] / 1e6

    print(json.dumps({
        "mode": args.mode, "batteries": n, "duration": args.duration,
        "sent": sent, "answered": answered, "lost": lost, "stray": stray,
        "throughput": answered / args.duration,
        "p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9),
        "max_ms": latencies[-1] / 1e6 if latencies else float("nan"),
        "generator_cpu": cpu,
    }))


if __name__ == "__main__":
    main()
