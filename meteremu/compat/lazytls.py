"""TLS support loaded when a connection first needs it, not at start-up.

Twisted probes for pyOpenSSL while its reactor and ``twisted.internet.endpoints``
are imported, and so loads pyOpenSSL, cryptography's Rust module and
service_identity (about 12 MiB of a 60 MiB process) whether or not anything
ever speaks TLS (upstream: twisted/twisted#9123). The simulator, DSMR, Modbus,
plain MQTT and every device transport never do; an Envoy, a HomeWizard, Home
Assistant over HTTPS or InfluxDB over HTTPS do.

So the ``meteremu`` reactor (:mod:`meteremu.reactor`) imports the reactor and
``endpoints`` with pyOpenSSL hidden (:func:`hide`). Twisted then takes its
"no TLS here" branch, which leaves a few module globals at ``None``.
:func:`release` puts the import back and replaces those globals with
:class:`StandIn` objects; the first use of any of them (``wrapClientTLS``,
treq's HTTPS, ``connectSSL``) runs :func:`load`, which imports the real objects
and puts them in place of the stand-ins: from then on Twisted is exactly as if
it had loaded TLS at start-up (``IReactorSSL`` is declared on the reactor then
too). Flags that ask "is TLS here?" on plain paths (Autobahn's ``_TLS``, asked
on every abnormal WebSocket close) get no stand-in: they stay False until
:func:`load`, or the question itself would load TLS. The one thing not restored is STARTTLS on a
plain reactor TCP transport (``tcp.Connection.startTLS``), which Twisted builds
into the class at import; meteremu never upgrades a connection in place.

Where each name comes from is listed in :data:`RESTORE`; a test compares it
with the ``try: import OpenSSL ... else:`` branches of the installed Twisted
(by parsing their source), so a Twisted upgrade that adds a name fails the
suite instead of failing in the field.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from typing import Any

HIDDEN = ("OpenSSL",)

# module -> {global name: (source module, attribute or None for the module)}
RESTORE: dict[str, dict[str, tuple[str, str | None]]] = {
    "twisted.internet.posixbase": {
        "_tls": ("twisted.protocols.tls", None),
        "tls": ("twisted.protocols.tls", None),
        "_ssl": ("twisted.internet.ssl", None),
        "ssl": ("twisted.internet.ssl", None),
    },
    "twisted.internet.endpoints": {
        "SSLError": ("OpenSSL.SSL", "Error"),
        "Certificate": ("twisted.internet.ssl", "Certificate"),
        "CertificateOptions": ("twisted.internet.ssl", "CertificateOptions"),
        "KeyPair": ("twisted.internet.ssl", "KeyPair"),
        "PrivateCertificate": ("twisted.internet.ssl", "PrivateCertificate"),
        "optionsForClientTLS": ("twisted.internet.ssl", "optionsForClientTLS"),
        "trustRootFromCertificates": ("twisted.internet.ssl", "trustRootFromCertificates"),
        "SNIConnectionCreator": ("twisted.protocols._sni", "SNIConnectionCreator"),
        "_TLSServerEndpoint": ("twisted.protocols._sni", "TLSServerEndpoint"),
        "autoReloadingDirectoryOfPEMs": ("twisted.protocols._sni", "autoReloadingDirectoryOfPEMs"),
        "_TLSMemoryBIOFactory": ("twisted.protocols.tls", "TLSMemoryBIOFactory"),
        "TLSMemoryBIOFactory": ("twisted.protocols.tls", "TLSMemoryBIOFactory"),
    },
    "autobahn.util": {
        "SSL": ("OpenSSL", "SSL"),
        "_TLS": ("builtins", "True"),
    },
}

# Modules whose TLS names are set only by :func:`load`, never replaced by stand-ins:
# Autobahn asks ``if _TLS:`` on every abnormal close (is the error a TLS one?);
# a stand-in would answer yes and load TLS for a plain WebSocket. Until TLS is
# loaded no TLS error can exist, so "no TLS" is the right answer meanwhile.
AT_LOAD_ONLY = frozenset({"autobahn.util"})

_lock = threading.Lock()
_state = {"hidden": False, "loaded": False}


class _Hide:
    """A meta-path finder that makes ``import OpenSSL`` fail while it is installed."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: Any = None) -> ModuleSpec | None:
        if name.partition(".")[0] in HIDDEN:
            raise ImportError(f"{name} is loaded on first use (meteremu.compat.lazytls)", name=name)
        return None


_finder = _Hide()


def hide() -> None:
    """Hide pyOpenSSL from imports until :func:`release` (before the reactor is imported)."""
    if "OpenSSL" in sys.modules:
        return  # too late: TLS is loaded already, nothing to save
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    _state["hidden"] = True


def hidden() -> bool:
    return _finder in sys.meta_path


def release() -> None:
    """Let pyOpenSSL be imported again; what Twisted left at ``None`` loads on first use."""
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    if not _state["hidden"] or _state["loaded"]:
        return
    for module, names in RESTORE.items():
        namespace = _namespace(module)
        if namespace is None or module in AT_LOAD_ONLY:
            continue
        for name in names:
            if _missing(namespace, name):
                namespace[name] = StandIn(name)


def loaded() -> bool:
    """True once TLS support is in the process (always, when it was never hidden)."""
    return not _state["hidden"] or _state["loaded"]


def load() -> None:
    """Import TLS support now and put the real objects where the stand-ins are."""
    if _finder in sys.meta_path:
        raise ImportError("TLS support is hidden until meteremu.compat.lazytls.release()")
    with _lock:
        if _state["loaded"]:
            return
        for module, names in RESTORE.items():
            namespace = _namespace(module)
            if namespace is None:
                continue
            for name, (source, attribute) in names.items():
                if _missing(namespace, name) or isinstance(namespace.get(name), StandIn):
                    namespace[name] = _resolve(source, attribute)
        _declare_reactor_ssl()
        _state["loaded"] = True


def _declare_reactor_ssl() -> None:
    """posixbase declares ``IReactorSSL`` at import only if it found TLS: declare it now."""
    posixbase = sys.modules.get("twisted.internet.posixbase")
    if posixbase is None:
        return
    from twisted.internet.interfaces import IReactorSSL
    from zope.interface import classImplements

    if not IReactorSSL.implementedBy(posixbase.PosixReactorBase):
        # A class found at run time: the zope plugin cannot check it statically.
        classImplements(posixbase.PosixReactorBase, IReactorSSL)  # type: ignore[misc]


def _namespace(module: str) -> dict[str, Any] | None:
    """The globals of ``module`` if it was imported (we restore nothing nobody imported)."""
    loaded_module = sys.modules.get(module)
    return None if loaded_module is None else vars(loaded_module)


def _missing(namespace: dict[str, Any], name: str) -> bool:
    return namespace.get(name) in (None, False)


def _resolve(source: str, attribute: str | None) -> Any:
    if source == "builtins":
        return {"True": True}[attribute or ""]
    module = importlib.import_module(source)
    return module if attribute is None else getattr(module, attribute)


class StandIn:
    """Stands for one TLS object until it is used; using it loads TLS (:func:`load`).

    Twisted tests these globals with ``is None`` (so a stand-in reads as
    "TLS available"), calls them or reads attributes from them; each of those
    loads TLS first and then forwards to the real object.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def _real(self) -> Any:
        load()
        for module, names in RESTORE.items():
            if self._name in names:
                namespace = _namespace(module)
                if namespace is not None and not isinstance(namespace.get(self._name), StandIn):
                    return namespace[self._name]
        source, attribute = next(n[self._name] for n in RESTORE.values() if self._name in n)
        return _resolve(source, attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(self._real(), attribute)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<TLS object {self._name!r}, loaded on first use>"
