"""twistd plugin for meteremu.

Deliberately import-light: twistd and trial import every plugin module while
scanning, so this file must not import the reactor or anything heavy.
``ServiceMaker`` imports ``meteremu.tap`` only when ``twistd meteremu`` runs.
"""

from twisted.application.service import ServiceMaker

meteremu = ServiceMaker(
    "meteremu",
    "meteremu.tap",
    "Energy-meter emulator and gateway (Shelly Pro 3EM over HTTP/WS/UDP/Modbus/mDNS)",
    "meteremu",
)
