"""aioesphomeapi's exceptions → what the meter says, and whether hoping helps. Pure.

aioesphomeapi's own texts carry its log name, the device's name and MAC and,
for a malformed key, the key's length; they are rewritten here into one
sentence a user can act on. Nothing a caller passes as ``secrets`` survives
(:func:`redact`), whatever a future release puts into its messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """How a failed connection attempt is reported and retried."""

    state: str  # the connection state shown in meter.details
    message: str
    permanent: bool  # retrying soon will not help: wait reconnect_max
    unexpected: bool = False  # not a failure this module knows: logged as a bug once


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and its whitespace-free form) replaced by ``***``."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, "".join(secret.split())}:
            if len(form) >= 4:
                text = text.replace(form, "***")
    return text


def _names(exc: BaseException) -> list[str]:
    return [cls.__name__ for cls in type(exc).__mro__]


def verdict(exc: BaseException, where: str, timeout: float) -> Verdict:
    """The verdict on a failed attempt; ``where`` names the device (``ESPHome 192.168.1.30:6053``).

    Matched by class name along the exception's MRO, so this module never imports aioesphomeapi.
    """
    names = _names(exc)
    if "InvalidEncryptionKeyAPIError" in names:
        if "EncryptionErrorAPIError" in names:
            return Verdict("failing", f"{where}: a frame failed to decrypt; reconnecting", False)
        return Verdict("bad key", f"{where} refused the encryption key: set encryption_key to the device's "
                                  "api: encryption: key", True)
    if "EncryptionPlaintextAPIError" in names:
        return Verdict("bad key", f"{where} has no API encryption: leave encryption_key out, "
                                  "or turn on api: encryption on the device", True)
    if "RequiresEncryptionAPIError" in names:
        return Verdict("bad key", f"{where} requires API encryption: set encryption_key", True)
    if "EncryptionHelloAPIError" in names:  # a reset right after our hello: a reboot, or no encryption
        return Verdict("failing", f"{where} dropped the connection at the encrypted hello (restarting, "
                                  "or without API encryption: then leave encryption_key out)", False)
    if "InvalidAuthAPIError" in names:
        return Verdict("bad password", f"{where} refused the password", True)
    if "BadNameAPIError" in names or "BadMACAddressAPIError" in names:
        return Verdict("wrong device", f"{where} is another device ({_first_line(exc)}); "
                                       "check host and expected_name", True)
    if "MatchError" in names:
        return Verdict("sensors missing", f"{where}: {exc}", True)
    if "PingFailedAPIError" in names:
        return Verdict("failing", f"{where}: no answer to pings (keepalive); the device is gone", False)
    if "SocketClosedAPIError" in names or "ReadFailedAPIError" in names:
        return Verdict("failing", f"{where} closed the connection", False)
    if "TimeoutError" in names or "TimeoutAPIError" in names:
        return Verdict("failing", f"{where}: no answer within {timeout:g} s", False)
    if "HandshakeAPIError" in names:
        return Verdict("failing", f"{where}: handshake failed ({_first_line(exc)})", False)
    if "ProtocolAPIError" in names:
        return Verdict("failing", f"{where}: protocol error ({_first_line(exc)})", False)
    cause = _os_cause(exc)
    if isinstance(cause, ConnectionRefusedError):
        return Verdict("failing", f"{where}: connection refused", False)
    if cause is not None and cause.strerror:
        return Verdict("failing", f"{where}: {cause.strerror}", False)
    if isinstance(exc, OSError) or "APIConnectionError" in names:
        return Verdict("failing", f"{where}: cannot connect ({_first_line(exc)})", False)
    return Verdict("failing", f"{where}: {type(exc).__name__}: {_first_line(exc)}", False, unexpected=True)


def _os_cause(exc: BaseException) -> OSError | None:
    """The socket error behind ``exc`` (aioesphomeapi wraps it, naming every address tried)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, OSError) and not isinstance(seen, TimeoutError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    # aioesphomeapi prefixes its log name ("127.0.0.1:6053: ..." or "name @ 1.2.3.4: ..."): ours says where
    head, sep, rest = line.partition(": ")
    if sep and (" @ " in head or head.count(".") >= 1 or head.count(":") >= 1) and rest:
        line = rest
    return line[:200]
