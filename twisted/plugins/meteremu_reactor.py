"""The ``meteremu`` reactor plugin: ``twistd --reactor=meteremu``, ``trial --reactor=meteremu``.

Import-light like every plugin module (twistd and trial import them all while
scanning); the reactor is in :mod:`meteremu.reactor`.
"""

from twisted.application.reactors import Reactor

meteremu = Reactor(
    "meteremu", "meteremu.reactor",
    "asyncio reactor that loads TLS support on first use (what meteremu runs on)",
)
