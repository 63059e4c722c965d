"""Options of the Tibber Pulse source (``source: {type: tibber_pulse, …}``). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from meteremu.configtypes import Duration
from meteremu.sources.addresses import host_errors
from meteremu.sources.homewizard.options import host_port
from meteremu.sources.httpoptions import timing_errors
from meteremu.sources.jsonfields import DEFAULT_MAX_POWER
from meteremu.sources.smlparse import smllib_problem


@dataclass(frozen=True)
class TibberPulseOptions:
    host: str = field(metadata={"doc": "address of the Pulse bridge, e.g. 192.168.1.80 (optionally :port)"})
    password: str | None = field(default=None, repr=False, metadata={
        "doc": "the bridge password (printed on the bridge's QR code sticker)"})
    username: str = field(default="admin", metadata={"doc": "the bridge's web user"})
    node_id: int = field(default=1, metadata={"doc": "the Pulse's node on the bridge (1 for the first)"})
    interval: Duration = field(default=2.0, metadata={"doc": "poll period (the Pulse sends a frame every 1-4 s)"})
    timeout: Duration = field(default=5.0, metadata={"doc": "whole request timeout (the bridge is slow)"})
    invert: bool = field(default=False, metadata={"doc": "multiply grid power by -1 (a meter that counts export positive)"})
    max_power: float = field(default=DEFAULT_MAX_POWER, metadata={
        "doc": "W: a power value beyond this is refused"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first retry delay after a failure"})
    reconnect_max: Duration = field(default=60.0, metadata={"doc": "longest retry delay"})

    def validate(self) -> list[tuple[str, str]]:
        errors = timing_errors(self)
        problem = smllib_problem()
        if problem:
            errors.append(("host", problem))
        errors += host_errors(self.host, "the bridge's address, e.g. 192.168.1.80")
        if not 0 <= self.node_id <= 255:
            errors.append(("node_id", "a node number from 0 to 255"))
        if not self.max_power > 0 or self.max_power == float("inf"):
            errors.append(("max_power", "a finite power in W greater than 0"))
        return errors

    def url(self) -> str:
        host, port = host_port(self.host, 80)
        netloc = f"[{host}]" if ":" in host else host
        return f"http://{netloc}{'' if port == 80 else f':{port}'}/data.json?node_id={self.node_id}"
