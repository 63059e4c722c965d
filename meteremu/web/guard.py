"""Who may use the dashboard and the admin routes: a Host allowlist and an optional token.

A web page on any site can make the visitor's browser send requests to a
device on their LAN; with DNS rebinding the page's own host name resolves to
the device, so ``Origin`` and ``Host`` agree and the browser's same-origin
rules let the page read the answers. What that page cannot choose is the
name it put in the address bar: the ``Host`` header carries the attacker's
name, not one of the device's. So the dashboard (``/ui``), the admin and
metrics routes answer only requests whose ``Host`` is one of this machine's
names or addresses (or a configured extra), and, when ``server.admin_token``
is set, only with that token (``Authorization: Bearer …``, or the cookie that
``/ui?token=…`` sets). The Shelly RPC routes stay open, as on the real
device: batteries and Home Assistant must reach them by IP, and they change
nothing.

Behind Home Assistant's ingress the Supervisor is the client: it has
authenticated the user, forwards the browser's own ``Host`` and adds the path
prefix it serves us under in ``X-Ingress-Path``. Requests from an address in
``server.ingress_proxies`` that carry that header pass; the prefix (checked
to be a plain path) becomes the page's ``<base href>``, so the dashboard's
relative links stay under it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
from collections.abc import Iterable
from typing import Any, cast

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

PROTECTED = (b"/ui", b"/admin", b"/metrics")
COOKIE = b"meteremu_token"
INGRESS_HEADER = b"x-ingress-path"
_PLAIN_PATH = re.compile(r"(/[A-Za-z0-9._~-]+){1,8}")
_BASE = "_meteremu_base_href"


def protected(path: bytes) -> bool:
    """Paths the guard covers: the dashboard, ``/admin/…`` and ``/metrics``."""
    return any(path == p or path.startswith(p + b"/") or path.startswith(p + b"?") for p in PROTECTED)


def host_name(header: bytes | None) -> str | None:
    """The host part of a ``Host`` header (``[::1]:80`` → ``::1``), lower case, or None."""
    if not header:
        return None
    text = header.decode("latin-1").strip().lower().rstrip(".")
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else None
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text or None


def own_names(extra: Iterable[str] = ()) -> frozenset[str]:
    """This machine's names and addresses, plus ``extra`` (lower case)."""
    names = {"localhost", "127.0.0.1", "::1"}
    hostname = socket.gethostname().lower()
    names |= {hostname, hostname.split(".")[0], hostname.split(".")[0] + ".local"}
    try:
        import ifaddr

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                address = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
                names.add(str(ipaddress.ip_address(address.split("%")[0])))
    except (ImportError, OSError, ValueError):  # pragma: no cover - the addresses stay out
        pass
    names |= {e.strip().lower().rstrip(".") for e in extra if e.strip()}
    return frozenset(names)


def ingress_prefix(peer: str | None, header: bytes | None, proxies: frozenset[str]) -> str | None:
    """Pure: the path prefix of a request that came through a trusted ingress proxy, or None.

    Only a peer in ``proxies`` counts, and only a plain path (segments of
    letters, digits and ``._~-``, at most 8, no ``..``): the value ends up
    in the page as ``<base href>``.
    """
    if peer is None or header is None or peer not in proxies:
        return None
    text = header.decode("latin-1").strip().rstrip("/")
    if len(text) > 200 or not _PLAIN_PATH.fullmatch(text) or "/../" in text + "/" or "/./" in text + "/":
        return None
    return text


def base_href(request: IRequest) -> str:
    """Where the dashboard's relative links start: ``/``, or the ingress prefix plus ``/``."""
    prefix = getattr(request, _BASE, None)
    return f"{prefix}/" if isinstance(prefix, str) else "/"


def allowed(host: str | None, names: frozenset[str]) -> bool:
    """Pure: may a request with this Host reach a protected route?"""
    return "*" in names or (host is not None and host in names)


class Guard(Resource):
    """Wraps a site's root: protected paths need an allowed Host (and the token, if set)."""

    isLeaf = True

    def __init__(self, wrapped: IResource, names: frozenset[str], token: str | None = None,
                 ingress_proxies: Iterable[str] = ()) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._names = names
        self._token = token.encode() if token else None
        self._proxies = frozenset(str(ipaddress.ip_address(a)) for a in ingress_proxies)

    def render(self, request: IRequest) -> Any:
        path = request.path
        if not protected(path):
            return self._wrapped.render(request)
        peer = getattr(request.getClientAddress(), "host", None)
        prefix = ingress_prefix(peer, request.getHeader(INGRESS_HEADER), self._proxies)
        if prefix is not None:  # the proxy authenticated the user (module docstring)
            setattr(request, _BASE, prefix)
            return self._wrapped.render(request)
        if not allowed(host_name(request.getHeader(b"host")), self._names):
            return _refuse(request, 403, "this name is not one of this device's (server.allowed_hosts)")
        if self._token is not None and not self._authorized(request):
            return _refuse(request, 401, "a token is needed (server.admin_token)")
        return self._wrapped.render(request)

    def _authorized(self, request: IRequest) -> bool:
        assert self._token is not None
        offered = [request.getCookie(COOKIE)]
        header = request.getHeader(b"authorization") or b""
        if header[:7].lower() == b"bearer ":
            offered.append(header[7:].strip())
        query = (request.args or {}).get(b"token")
        if query:
            offered.append(query[0])
        ok = any(o is not None and hmac.compare_digest(o, self._token) for o in offered)
        if ok and query and request.path.startswith(b"/ui"):
            # The page's own requests (fetch) carry the cookie from now on. (IRequest's
            # addCookie predates httpOnly/sameSite; twisted.web's Request has both.)
            cast(Request, request).addCookie(COOKIE, self._token, path=b"/", httpOnly=True, sameSite="strict")
        return ok


def _refuse(request: IRequest, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps({"error": message}).encode()
