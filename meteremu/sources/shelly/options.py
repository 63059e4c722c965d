"""Options of the Shelly source (``source: {type: shelly, …}``): a real Shelly read as the meter. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from meteremu.configtypes import Duration
from meteremu.sources.addresses import host_errors
from meteremu.sources.homewizard.options import host_port
from meteremu.sources.httpoptions import timing_errors
from meteremu.sources.jsonfields import DEFAULT_MAX_POWER
from meteremu.sources.shelly.parse import component_problem, gen1_channel_problem


@dataclass(frozen=True)
class ShellyOptions:
    host: str = field(metadata={"doc": "address of the Shelly, e.g. 192.168.1.90 (optionally :port)"})
    gen: Literal[1, 2] = field(default=2, metadata={
        "doc": "2: Gen2 and later (RPC: Pro 3EM, Pro EM, EM gen3, Plus/Pro PM…); 1: Gen1 (/status: 3EM, EM, 1PM…)"})
    mode: Literal["websocket", "poll"] | None = field(default=None, metadata={
        "doc": "Gen2: websocket (default; NotifyStatus pushes, polling while it is down) or poll; Gen1: poll"})
    username: str = field(default="admin", metadata={"doc": "Gen1: the login user (Gen2's is always admin)"})
    password: str | None = field(default=None, repr=False, metadata={
        "doc": "the device password, if authentication is on (Gen2: digest; Gen1: basic)"})
    channels: tuple[str, ...] = field(default=(), metadata={
        "doc": "Gen2: em:0 (3 phases), or up to 3 of em1:N / pm1:N / switch:N as phases A, B, C; Gen1: up to 3 "
               "of emeter:N / meter:N; default: em:0, em1:0, pm1:0 or switch:0 (Gen1: a 3EM's three emeters, "
               "emeter:0 or meter:0)"})
    interval: Duration = field(default=1.0, metadata={"doc": "poll period (and the fallback's, with the WebSocket)"})
    timeout: Duration = field(default=5.0, metadata={"doc": "whole request / handshake timeout"})
    idle_timeout: Duration = field(default=30.0, metadata={
        "doc": "WebSocket: reconnect when no message came for this long (the device pushes at least every minute)"})
    invert: bool = field(default=False, metadata={"doc": "multiply power by -1 (a Shelly measuring the other way)"})
    max_power: float = field(default=DEFAULT_MAX_POWER, metadata={"doc": "W: a power value beyond this is refused"})
    reconnect_min: Duration = field(default=1.0, metadata={"doc": "first retry delay after a failure"})
    reconnect_max: Duration = field(default=60.0, metadata={"doc": "longest retry delay"})

    def validate(self) -> list[tuple[str, str]]:
        errors = timing_errors(self)
        errors += host_errors(self.host, "the Shelly's address, e.g. 192.168.1.90")
        if self.gen == 1 and self.mode == "websocket":
            errors.append(("mode", "poll (Gen1 devices have no RPC WebSocket)"))
        check = gen1_channel_problem if self.gen == 1 else component_problem
        for name in self.channels:
            problem = check(name)
            if problem:
                errors.append(("channels", problem))
                break
        else:
            if any(c.startswith("em:") for c in self.channels) and len(self.channels) > 1:
                errors.append(("channels", "em:N alone (it has three phases already)"))
            elif len(self.channels) > 3:
                errors.append(("channels", "at most 3 single-phase channels (phases A, B, C)"))
        if not self.idle_timeout > self.interval:
            errors.append(("idle_timeout", "a duration longer than interval"))
        if not self.max_power > 0 or self.max_power == float("inf"):
            errors.append(("max_power", "a finite power in W greater than 0"))
        return errors

    @property
    def push(self) -> bool:
        return self.gen == 2 and self.mode != "poll"

    def base(self, scheme: str = "http") -> str:
        host, port = host_port(self.host, 80)
        netloc = f"[{host}]" if ":" in host else host
        return f"{scheme}://{netloc}{'' if port == 80 else f':{port}'}"
