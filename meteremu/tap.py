"""twistd entry point: ``twistd meteremu --config etc/meteremu.yaml``.

The config is read and validated in ``postOptions`` so a bad file ends the
process with one line (``meteremu: <file>: <key>: <why>``) and status 2,
before any port is opened and without a traceback or usage text.

Without ``--reactor``, ``makeService`` installs the ``meteremu`` reactor
(asyncio, TLS loaded on first use: ``meteremu.reactor``); ``--reactor=asyncio``
works too, any other reactor is refused in one line.
"""

from __future__ import annotations

import sys
from typing import Any, cast

from twisted.application.service import IService
from twisted.python import usage

from meteremu.config import Config, ConfigError, default_config, load_config


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = ("Impersonates a Shelly Pro 3EM (HTTP/WebSocket/UDP RPC, Modbus TCP, mDNS), "
                "fed by a real meter or the built-in simulator. Without --config, the "
                "embedded default runs: a simulated household served on port 8080.")
    optParameters = [["config", "c", None, "YAML configuration file"]]

    def postOptions(self) -> None:
        try:
            self["settings"] = load_config(self["config"]) if self["config"] else default_config()
        except ConfigError as exc:
            sys.stderr.write(f"meteremu: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None


def raise_open_files_limit() -> None:
    """Every connection is a file: take the hard limit (systemd: LimitNOFILE), say so once."""
    from meteremu.logs import logger
    from meteremu.openfiles import raise_soft_limit

    raised = raise_soft_limit()
    if raised is not None:
        logger("meteremu.openfiles").info("open-files limit raised from {old} to {new}",
                                          old=raised[0], new=raised[1])


def makeService(options: Options) -> IService:
    if "twisted.internet.reactor" not in sys.modules:
        # No --reactor: ours (asyncio, TLS loaded on first use), not Twisted's default.
        from meteremu.reactor import install

        install()
    from twisted.internet import reactor as installed

    from meteremu.app import build, fail_fast
    from meteremu.asyncbridge import require_asyncio_reactor
    from meteremu.compat import lazytls
    from meteremu.devices import preload
    from meteremu.interfaces import IReactor
    from meteremu.listeners import StartupGuard
    from meteremu.logs import set_level
    from meteremu.store import StoreError

    # Twisted types its global reactor as a subset of what the asyncio reactor provides.
    reactor = cast(IReactor, installed)

    config: Config = options["settings"]
    # Start-up imports (the device transports never use TLS), then: from
    # here on pyOpenSSL may be imported, and is, by the first source or
    # exporter that opens a TLS connection.
    preload(dc.type for dc in config.devices)
    lazytls.release()

    try:
        require_asyncio_reactor(reactor)
    except RuntimeError as exc:
        sys.stderr.write(f"meteremu: {exc}\n")
        raise SystemExit(2) from None
    set_level(config.logging.level)
    raise_open_files_limit()
    try:
        app = build(config, reactor)
    except StoreError as exc:  # disk full, no permission, locked: the file is untouched
        sys.stderr.write(f"meteremu: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None

    def started(_: Any) -> None:
        from meteremu.app import log
        from meteremu.memory import freeze_startup, release_memory

        release_memory()  # start-up garbage (imports, config parsing) back to the OS
        freeze_startup()  # what is left lives as long as the process: out of the collector's way
        ports = ", ".join(str(listener.port) for listener in app.http.values())
        log.info("meteremu serving on HTTP port(s) {ports}", ports=ports)

    def failed(failure: Any) -> None:
        fail_fast(reactor, str(failure.value))

    def start(_: Any = None) -> None:
        app.ready().addCallbacks(started, failed)

    reactor.callWhenRunning(start)
    guard = StartupGuard()
    app.service.setServiceParent(guard)
    return guard
