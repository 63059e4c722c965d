"""The emulated Shelly Pro 3EM: one RPC core, many transports."""

from meteremu.devices.shelly.options import Options

__all__ = ["Options"]
