"""meteremu: an energy-meter emulator and gateway."""

__version__ = "0.1.0"
