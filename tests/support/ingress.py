"""A stand-in for Home Assistant's ingress proxy: a path prefix and ``X-Ingress-Path``.

The Supervisor serves an add-on's web UI under ``/api/hassio_ingress/<token>/``:
it strips that prefix, forwards the rest to the add-on's ingress port and says
what it stripped in ``X-Ingress-Path``. This does the same with Twisted's own
reverse proxy, so a browser can load the dashboard the way Home Assistant's
sidebar does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Site

PREFIX = "/api/hassio_ingress/tok3n"


class IngressProxy(ReverseProxyResource):
    def __init__(self, port: int, path: bytes, prefix: str) -> None:
        super().__init__("127.0.0.1", port, path)
        self.prefix = prefix

    def getChild(self, path: bytes, request: Any) -> Resource:
        return IngressProxy(self.port, self.path + b"/" + quote(path, safe="").encode(), self.prefix)

    def render(self, request: Any) -> Any:
        request.requestHeaders.setRawHeaders(b"x-ingress-path", [self.prefix.encode()])
        return super().render(request)


def ingress_site(port: int, prefix: str = PREFIX) -> Site:
    """A site that proxies ``<prefix>/…`` to ``127.0.0.1:port/…``."""
    root = node = Resource()
    parts = prefix.strip("/").split("/")
    for part in parts[:-1]:
        child = Resource()
        node.putChild(part.encode(), child)
        node = child
    node.putChild(parts[-1].encode(), IngressProxy(port, b"", prefix))
    return Site(root)
