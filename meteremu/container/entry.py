"""``meteremu-container``: pick the configuration, then become ``twistd meteremu``.

Order (first match wins), so one image serves ``docker run`` with nothing, a
mounted file, or a compose file that carries the YAML inline:

1. ``METEREMU_CONFIG``: a path to a YAML file (it must exist);
2. ``METEREMU_CONFIG_YAML``: the YAML itself (written to a private file);
3. ``/config/meteremu.yaml`` when it exists (a mounted volume);
4. the packaged container default: the simulator on the real ports, state on ``/data``.

``exec`` replaces this process, so twistd is PID 1's program: ``docker stop``
(SIGTERM) reaches it directly and the final state is saved on the way out.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources

MOUNTED = "/config/meteremu.yaml"


@dataclass(frozen=True)
class Choice:
    """Where the configuration comes from: a file path, or inline text to write first."""

    path: str | None = None
    text: str | None = None
    origin: str = ""


class EntryError(Exception):
    """A start-up problem told in one line (exit status 2, as for a bad config)."""


def choose(env: Mapping[str, str], exists: Callable[[str], bool], default: str) -> Choice:
    """Pure: which configuration the container runs (see the module docstring)."""
    path = env.get("METEREMU_CONFIG", "").strip()
    if path:
        if not exists(path):
            raise EntryError(f"METEREMU_CONFIG names {path}, which does not exist")
        return Choice(path=path, origin="METEREMU_CONFIG")
    text = env.get("METEREMU_CONFIG_YAML", "")
    if text.strip():
        return Choice(text=text, origin="METEREMU_CONFIG_YAML")
    if exists(MOUNTED):
        return Choice(path=MOUNTED, origin=MOUNTED)
    return Choice(path=default, origin="the container default (simulator)")


def default_path() -> str:
    """The packaged container default (a real file inside the installed package)."""
    return str(resources.files("meteremu.container").joinpath("default.yaml"))


def resolve(choice: Choice) -> str:
    """A file path for ``--config``: inline YAML goes to a private 0600 file first."""
    if choice.path is not None:
        return choice.path
    fd, path = tempfile.mkstemp(prefix="meteremu-env-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(choice.text or "")
    return path


def twistd_argv(config: str) -> list[str]:
    """Foreground twistd logging to stdout (Docker collects it), no pidfile."""
    return ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "meteremu", "--config", config]


def exec_twistd(config: str, origin: str) -> None:
    """Replace this process with twistd from the same environment (venv)."""
    sys.stdout.write(f"meteremu: configuration from {origin}\n")
    sys.stdout.flush()
    binary = os.path.join(os.path.dirname(sys.executable), "twistd")
    os.execv(binary, twistd_argv(config))


def main() -> None:
    try:
        choice = choose(os.environ, os.path.exists, default_path())
    except EntryError as exc:
        sys.stderr.write(f"meteremu: {exc}\n")
        raise SystemExit(2) from None
    exec_twistd(resolve(choice), choice.origin)
