"""Compile, while the image is built, the bytecode of what a start imports.

The image ships the libraries without their ``.pyc`` files, as the official
Python images do: all of them would add about 29 MB (15 % of the image) and
most are never imported (Twisted alone brings mail, chat and SSH). But the
service runs as a user who cannot write bytecode next to the sources, so
every start would compile again what it imports (about 0.6 s on x86, a few
seconds on a Raspberry Pi). ``python -m meteremu.container.warmup``, run as
root at the end of the build, imports exactly what ``twistd meteremu`` does
with the container default and builds its service tree, which leaves the
bytecode of those modules (about 8 MB) in the image.

Nothing is started: the reactor never runs, so no port is bound and nothing
is sent; the store it opens lives in a temporary directory removed after.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

from meteremu.container.entry import default_path


def config_for_build(default: str, state: Path) -> str:
    """The container default with its state moved to ``state`` (the build's scratch)."""
    settings = yaml.safe_load(Path(default).read_text(encoding="utf-8"))
    settings.setdefault("store", {})["path"] = str(state / "meteremu.db")
    return yaml.safe_dump(settings, sort_keys=False)


def main() -> None:
    # What the twistd command line itself imports before the plugin's code.
    import twisted.scripts._twistd_unix  # noqa: F401
    import twisted.scripts.twistd  # noqa: F401

    from meteremu.container import healthcheck  # noqa: F401  (the HEALTHCHECK command)
    from meteremu.tap import Options, makeService

    with tempfile.TemporaryDirectory(prefix="meteremu-warmup-") as scratch:
        config = Path(scratch) / "meteremu.yaml"
        config.write_text(config_for_build(default_path(), Path(scratch)), encoding="utf-8")
        options = Options()
        options.parseOptions(["--config", str(config)])
        makeService(options)
    sys.stdout.write("meteremu: start-up modules compiled\n")


if __name__ == "__main__":
    main()
