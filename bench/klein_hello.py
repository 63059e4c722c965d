"""The HTTP ceiling: a bare Klein "hello" route on the asyncio reactor.

Served like meteremu serves HTTP (Klein resource, a ``Site`` without access
log), so the ratio shows what meteremu's own work costs.
``python bench/klein_hello.py PORT`` prints ``hello serving on HTTP port N``.
"""

from __future__ import annotations

import sys

from twisted.internet import asyncioreactor

asyncioreactor.install()

from klein import Klein  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.web.server import Site  # noqa: E402

app = Klein()


@app.route("/")
def hello(request: object) -> bytes:
    return b"hello"


class QuietSite(Site):
    noisy = False

    def log(self, request: object) -> None:
        pass


def main() -> None:
    port = reactor.listenTCP(int(sys.argv[1]), QuietSite(app.resource()), interface="127.0.0.1")
    print(f"hello serving on HTTP port {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
