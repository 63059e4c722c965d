"""The ``meteremu`` reactor: Twisted's asyncio reactor, on the monotonic clock, TLS loaded on first use.

``twistd meteremu`` installs it when no ``--reactor`` is given;
``twistd --reactor=meteremu`` and ``trial --reactor=meteremu`` name it (the
plugin is ``twisted/plugins/meteremu_reactor.py``). It is the asyncio reactor
in every way but two. Its ``seconds()`` is monotonic (:mod:`meteremu.clocks`):
a wall-clock step never freezes or rushes a timer; ``wallSeconds()`` is the
wall clock, for timestamps. And TLS support is imported when first used (see
:mod:`meteremu.compat.lazytls`): the modules that probe for pyOpenSSL at import are
imported here, with it hidden, and :func:`meteremu.compat.lazytls.release` runs once
the reactor is running at the latest.
"""

from __future__ import annotations

from meteremu.compat import lazytls


def install() -> None:
    lazytls.hide()
    try:
        import time

        from twisted.internet.asyncioreactor import AsyncioSelectorReactor
        from twisted.internet.main import installReactor

        from meteremu.clocks import monotonic_epoch

        class MeteremuReactor(AsyncioSelectorReactor):
            """Timers on the monotonic clock; the wall clock for timestamps."""

            def __init__(self) -> None:
                super().__init__()
                self.seconds = monotonic_epoch  # DelayedCalls and LoopingCalls use this

            def wallSeconds(self) -> float:
                return time.time()

        installReactor(MeteremuReactor())
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
