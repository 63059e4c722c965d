"""A private Docker engine for the container tests, and the meteremu image built in it.

``engine()`` starts (once per test run) a ``dockerd`` of the suite's own: its
socket, data and exec roots under ``.cache/docker`` (ignored by git), no
iptables rules and no masquerading, and as its default network a bridge the
suite makes (``meteremu-br0``, 198.18.250.1/24, the benchmarking range): a
container there has a LAN of its own for mDNS and the device ports, and
nothing it sends leaves the machine. Tests use that bridge, ``--network
host`` bound to loopback, or no network; builds run with no network.

The image is built as a user would build it, with the unchanged Dockerfile,
but offline (``docker build --network none``):

- the base image the Dockerfile names (``python:3.11-slim-bookworm``) is used
  when present; otherwise it is made from Debian's package archive with
  ``debootstrap`` (python3 and venv, the same Python minor version) and
  imported under that name, since this machine cannot reach a registry;
- Python packages come from wheels made here with ``pip wheel`` and handed to
  the build through its ``WHEELS`` argument.

Skips (with the reason) when not root or when dockerd/debootstrap are
missing: CI is root and installs them (scripts/debian-packages).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".cache" / "docker"
# The exec root holds unix sockets: keep its path short, and one per checkout
# (two checkouts' engines must not share it).
EXEC_ROOT = Path("/run/meteremu-test-docker-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:8])
SOCKET = ROOT / "docker.sock"
BASE = "python:3.11-slim-bookworm"
IMAGE = "meteremu-test/meteremu:latest"
ADDON_IMAGE = "meteremu-test/addon:latest"
MIRROR = "http://deb.debian.org/debian"
BRIDGE = "meteremu-br0"
BRIDGE_ADDRESS = "198.18.250.1/24"

_ready: str | None = None
_built: set[str] = set()


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/usr/bin") if os.access(p := os.path.join(d, name), os.X_OK)), None)


def docker_skip() -> str | None:
    """Why the container tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the container tests need root (a private dockerd); CI runs them"
    for tool in ("dockerd", "docker"):
        if _which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install docker.io)"
    return None


def env() -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}"}


def docker(*args: str, timeout: float = 120, check: bool = True,
           input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``docker`` against the private engine; a failure names the command and its stderr."""
    done = subprocess.run([_which("docker") or "docker", *args], env=env(), capture_output=True,
                          text=True, timeout=timeout, check=False,
                          input=input.decode() if input is not None else None)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def _answers() -> bool:
    if not SOCKET.exists():
        return False
    return docker("version", "--format", "{{.Server.Version}}", timeout=10, check=False).returncode == 0


def engine() -> None:
    """Start the private dockerd if it is not already answering (left running for reuse)."""
    global _ready
    if _ready:
        return
    ROOT.mkdir(parents=True, exist_ok=True)
    if not _answers():
        _bridge()
        log = open(ROOT / "dockerd.log", "ab")
        subprocess.Popen(
            [_which("dockerd") or "dockerd", "--host", f"unix://{SOCKET}",
             "--data-root", str(ROOT / "data"), "--exec-root", str(EXEC_ROOT),
             "--pidfile", str(ROOT / "dockerd.pid"), "--bridge", BRIDGE,
             "--iptables=false", "--ip6tables=false", "--ip-masq=false"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within 60 s (see {ROOT / 'dockerd.log'})")
            time.sleep(0.3)
    _ready = str(SOCKET)


def _bridge() -> None:
    """The suite's own bridge for containers (idempotent)."""
    ip = _which("ip") or "ip"
    if subprocess.run([ip, "link", "show", BRIDGE], capture_output=True).returncode != 0:
        subprocess.run([ip, "link", "add", BRIDGE, "type", "bridge"], check=True, capture_output=True)
        subprocess.run([ip, "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE], check=True, capture_output=True)
    subprocess.run([ip, "link", "set", BRIDGE, "up"], check=True, capture_output=True)


def address(container: str) -> str:
    """A container's address on the suite's bridge."""
    return docker("inspect", "--format", "{{.NetworkSettings.IPAddress}}", container).stdout.strip()


def _has_image(name: str) -> bool:
    return docker("image", "inspect", name, timeout=30, check=False).returncode == 0


# What Debian's own -slim images leave out (debuerreotype's slimify): package
# caches, documentation, manuals and translations. The official
# python:3.11-slim-bookworm is built on debian:bookworm-slim, so the stand-in
# is slimmed the same way for its size to be comparable.
_SLIM_DIRS = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
              "usr/share/info", "usr/share/groff", "usr/share/lintian", "usr/share/linda")


def _slim(rootfs: Path) -> None:
    for junk in _SLIM_DIRS:
        shutil.rmtree(rootfs / junk, ignore_errors=True)
    locale = rootfs / "usr/share/locale"
    for entry in locale.iterdir() if locale.is_dir() else ():
        if entry.name != "locale.alias":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def base_image() -> None:
    """Make sure the Dockerfile's base exists: else debootstrap Debian and import it under that name."""
    if _has_image(BASE):
        return
    debootstrap = _which("debootstrap")
    if debootstrap is None:
        raise RuntimeError(f"{BASE} is missing and debootstrap is not installed (apt-get install debootstrap)")
    tarball = ROOT / "base.tar"
    if not tarball.exists():
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=ROOT))
        try:
            subprocess.run([debootstrap, "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                            "bookworm", str(rootfs), MIRROR], check=True, capture_output=True, timeout=900)
            _slim(rootfs)
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball) + ".part", "."], check=True, timeout=300)
            os.replace(str(tarball) + ".part", tarball)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    with open(tarball, "rb") as data:
        done = subprocess.run([_which("docker") or "docker", "import", "--change", "CMD [\"python3\"]",
                               "-", BASE], stdin=data, env=env(), capture_output=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"docker import: {done.stderr.decode(errors='replace')[-500:]}")


def _context(into: Path) -> None:
    """What a clean clone holds (tracked and new, unignored files), like ``docker build .`` sees."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def _wheels(context: Path) -> None:
    """Every wheel the image needs, made on this machine (pip's own index and cache)."""
    out = context / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--wheel-dir", str(out), str(context)], check=True,
                   capture_output=True, timeout=900)
    subprocess.run([*pip, "download", "-q", "--dest", str(out), "setuptools>=68", "wheel"], check=True,
                   capture_output=True, timeout=300)


def image(forecast: bool = False) -> str:
    """Build the meteremu image (once per run) with the repository's Dockerfile, offline.

    The default is what ``docker build .`` makes (no numpy/scipy/scikit-learn);
    ``forecast=True`` builds the ``FORECAST=1`` variant the add-on uses.
    """
    name = IMAGE.replace(":latest", ":forecast") if forecast else IMAGE
    if name in _built:
        return name
    engine()
    base_image()
    with tempfile.TemporaryDirectory(prefix="build-", dir=ROOT) as tmp:
        context = Path(tmp)
        _context(context)
        _wheels(context)
        docker("build", "--network", "none", "--build-arg", "WHEELS=wheels",
               "--build-arg", f"FORECAST={1 if forecast else 0}", "-t", name, str(context), timeout=900)
    _built.add(name)
    return name


def addon_image() -> str:
    """The add-on image: ``addon/meteremu/Dockerfile`` on top of the meteremu image."""
    if ADDON_IMAGE in _built:
        return ADDON_IMAGE
    base = image(forecast=True)
    docker("build", "--network", "none", "--build-arg", f"BUILD_FROM={base}", "-t", ADDON_IMAGE,
           str(REPO / "addon" / "meteremu"), timeout=300)
    _built.add(ADDON_IMAGE)
    return ADDON_IMAGE


def image_size(name: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on loopback now (the container binds it on the host's network)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    """``python -m tests.support.docker``: build both variants and print their sizes (docs/container.md)."""
    if (why := docker_skip()) is not None:
        raise SystemExit(why)
    for forecast in (False, True):
        name = image(forecast)
        venv = docker("run", "--rm", "--entrypoint", "du", name, "-sm", "/opt/meteremu").stdout.split()[0]
        print(f"{name}: {image_size(name) / 1e6:.0f} MB (virtual environment {venv} MiB)")
    print(f"base {BASE}: {image_size(BASE) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
