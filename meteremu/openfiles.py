"""The open-files limit: raised to the hard limit at start-up, and what it leaves for connections.

Every connection is a file descriptor. Under the usual soft limit of 1,024
a slowloris client once took all of them and ``/shelly`` was refused for a
whole test (issue #22). The systemd unit sets ``LimitNOFILE=8192``; a
process started some other way (a shell, a container) gets whatever soft
limit it inherited, so :func:`raise_soft_limit` lifts it to the hard limit
(allowed without privilege). :func:`connection_budget` keeps the connection
cap below what is left, so the cap is reached before ``EMFILE`` is: the
store, log, listening ports and outgoing connections need descriptors too.
"""

from __future__ import annotations

try:
    import resource
except ImportError:  # not on POSIX
    resource = None  # type: ignore[assignment]

RESERVED = 128  # descriptors kept for everything but accepted connections


def soft_limit() -> int | None:
    """The current soft limit on open files (None where there is none to read)."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_soft_limit() -> tuple[int, int] | None:
    """Raise the soft limit to the hard one: ``(old, new)`` when it changed, else None."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return None
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if target <= soft:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return None
    return soft, target


def connection_budget(configured: int, limit: int | None) -> int:
    """The connection cap that fits under the open-files ``limit`` (at least 16)."""
    if limit is None:
        return configured
    return max(16, min(configured, limit - RESERVED))
