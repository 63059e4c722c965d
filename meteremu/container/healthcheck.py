"""``meteremu-healthcheck``: Docker's ``HEALTHCHECK`` on the service's own ``/healthz``.

It reads the same configuration the container runs (``entry.choose``) to find
the HTTP port, and asks ``127.0.0.1`` (host networking or not, the service
listens there too unless it was bound to one other address). Exit 0 only for
HTTP 200: ``/healthz`` answers 503 when the meter is stale or the store fails,
which is exactly when Docker (or the Supervisor's watchdog) should know.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from meteremu.config import Config, ConfigError, load_config
from meteremu.container.entry import EntryError, choose, default_path, resolve


def health_url(config: Config) -> str:
    """Pure: the URL that tells this configuration's health."""
    host = config.server.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.http_port}/healthz"


def main() -> None:
    try:
        config = load_config(resolve(choose(os.environ, os.path.exists, default_path())))
    except (EntryError, ConfigError) as exc:
        sys.stderr.write(f"unhealthy: {exc}\n")
        raise SystemExit(1) from None
    url = health_url(config)
    try:
        with urllib.request.urlopen(url, timeout=4) as answer:  # noqa: S310 - our own loopback URL
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        sys.stderr.write(f"unhealthy: {url}: {exc.__class__.__name__}\n")
        raise SystemExit(1) from None
    sys.stdout.write(f"{url}: HTTP {status}\n")
    raise SystemExit(0 if status == 200 else 1)
