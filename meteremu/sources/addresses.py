"""Where a device on the LAN is: one check for the ``host`` and ``port`` of every source.

A host is a bare address or name: a URL, a path or a space in it is the most
common slip (``http://192.168.1.50/``) and would otherwise surface later as
a confusing connection error.
"""

from __future__ import annotations


def host_errors(host: str | None, expected: str) -> list[tuple[str, str]]:
    """``expected`` says what belongs there, with an example ("the Shelly's address, e.g. …")."""
    bare = (host or "").strip()
    if not bare or "/" in bare or " " in bare:
        return [("host", f"{expected}; got {host!r}")]
    return []


def port_errors(port: int) -> list[tuple[str, str]]:
    if not 0 < port < 65536:
        return [("port", f"a TCP port; got {port}")]
    return []
