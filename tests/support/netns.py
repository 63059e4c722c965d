"""A small LAN of network namespaces for system tests (iproute2, root only).

Loopback hides what a home network does: broadcasts, multicast group
membership, a client that learns the meter's address from the first answer.
:class:`Lan` builds a switch (a Linux bridge in a namespace of its own) and
one namespace per host, each joined to the switch by a veth pair, with
addresses in ``10.77.<n>.0/24``. No namespace gets a default route: only
the LAN's own subnet, the limited broadcast and multicast are routed, so
nothing a test sends can leave the namespaces (the host's interfaces are in
another namespace altogether).

Every namespace, veth and bridge lives inside namespaces this module created,
so deleting the namespaces removes everything; :meth:`Lan.close` does that and
is registered as a test cleanup by :func:`lan`. Namespace names carry the
process id, so parallel runs (and other suites) never collide.

``exec_argv(host, argv)`` prefixes a command with ``ip netns exec``: the
meteremu twistd process runs in one namespace and client scripts in others.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from twisted.trial.unittest import SkipTest, TestCase

IP = shutil.which("ip") or "/usr/sbin/ip"
_counter = itertools.count(1)
_OURS = re.compile(r"^me(\d+)n\d+-\w+$")  # me<pid>n<k>-<host>: see lan()


def unavailable() -> str | None:
    """Why namespaces cannot be made here (``None``: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (the CI runs the suite as root)"
    if not os.path.exists(IP):
        return "iproute2's ip command is not installed"
    probe = f"me-probe-{os.getpid()}"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run([IP, "netns", "del", probe], capture_output=True)
    return None


def remove_orphans() -> list[str]:
    """Delete the namespaces of test runs that died before their cleanup (their pid is gone)."""
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    removed = []
    for line in listed.splitlines():
        name = line.split(" ", 1)[0]
        match = _OURS.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            subprocess.run([IP, "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


def _ip(*args: str) -> None:
    done = subprocess.run([IP, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Lan:
    """One switch and its hosts; ``hosts[name]`` is the host's IPv4 address."""

    prefix: str
    subnet: int
    hosts: dict[str, str] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    @property
    def broadcast(self) -> str:
        return f"10.77.{self.subnet}.255"

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def start(self) -> None:
        _ip("netns", "add", self.switch)
        self.namespaces.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        # No IGMP querier on this LAN: with snooping on, the bridge could
        # drop multicast it has seen no report for.
        _ip("-n", self.switch, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> str:
        """A namespace with ``eth0`` on the switch; returns its address."""
        ns = self.namespace(name)
        address = f"10.77.{self.subnet}.{len(self.hosts) + 1}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        port = f"p{len(self.hosts) + 1}"
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "brd", self.broadcast, "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        # Multicast and the limited broadcast go out of eth0; there is no
        # default route, so nothing else has anywhere to go.
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        _ip("-n", ns, "route", "add", "255.255.255.255/32", "dev", "eth0")
        self.hosts[name] = address
        return address

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        return [IP, "netns", "exec", self.namespace(host), *argv]

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run([IP, "netns", "del", ns], capture_output=True)
        self.namespaces.clear()


def lan(case: TestCase, *hosts: str) -> Lan:
    """A LAN with these hosts for one test, torn down in its cleanup; skips when not root."""
    why = unavailable()
    if why is not None:
        raise SkipTest(why)
    remove_orphans()
    number = next(_counter)
    built = Lan(prefix=f"me{os.getpid()}n{number}", subnet=(os.getpid() + number) % 250 + 1)
    case.addCleanup(built.close)
    try:
        built.start()
        for host in hosts:
            built.add_host(host)
    except Exception:
        built.close()
        raise
    return built
