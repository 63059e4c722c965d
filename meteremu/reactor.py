"""The ``meteremu`` reactor: Twisted's asyncio reactor with TLS loaded on first use.

``twistd meteremu`` installs it when no ``--reactor`` is given;
``twistd --reactor=meteremu`` and ``trial --reactor=meteremu`` name it (the
plugin is ``twisted/plugins/meteremu_reactor.py``). It is the asyncio reactor
in every way; the only difference is *when* TLS support is imported (see
:mod:`meteremu.compat.lazytls`): the modules that probe for pyOpenSSL at import are
imported here, with it hidden, and :func:`meteremu.compat.lazytls.release` runs once
the reactor is running at the latest.
"""

from __future__ import annotations

from meteremu.compat import lazytls


def install() -> None:
    lazytls.hide()
    try:
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
        import twisted.internet.endpoints  # noqa: F401  (probes for pyOpenSSL at import)
    except BaseException:
        lazytls.release()
        raise
    from twisted.internet import reactor

    # Whoever installed us releases when its own start-up imports are done
    # (twistd meteremu: once meteremu.app and the configured devices' transports are
    # imported, before the tree is built;
    # the test suite: in tests/__init__);
    # running the reactor releases in any case, so TLS can never stay hidden.
    reactor.callWhenRunning(lazytls.release)
