"""The battery lab: how well batteries regulate through meteremu, closed loop.

A household (load, appliances, PV) and battery plants (the batteries' own
firmware control laws) around the *real* meter path: the MQTT source's
mapping, a real :class:`~meteremu.meter.Meter`, the real Shelly device and
its transports. On a simulated clock (:mod:`meteremu.lab.sim`) an hour of
household runs in about a second; in real time (:mod:`meteremu.lab.realtime`)
the same scenario runs over real loopback sockets against meteremu or any
other emulator. The lab measures (:mod:`meteremu.lab.metrics`); it never
ships inside the running service, which never imports it.

Pure cores (plants, laws, metrics, statistics, reports) have no reactor and
no sockets; only ``realtime`` and ``cli`` do I/O. See docs/control.md.
"""
