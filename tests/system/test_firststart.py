"""The first five minutes: numpy and scikit-learn come with ``pip install .``,
and a service with forecasting off still never loads them.

The fresh venv sees every other dependency through a ``.pth`` file pointing at
a directory of links into the test venv, without numpy, scikit-learn and
their own dependencies, so ``pip install .`` must bring those itself (from
the configured index) while the test stays bounded (no Twisted, no
Autobahn... downloaded again).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.support import HTTPClient
from tests.support.twistd import RUN, spawn, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HIDDEN = ("numpy", "scikit_learn", "sklearn", "scipy", "joblib", "threadpoolctl", "meteremu",
          "pip", "_distutils_hack", "distutils-precedence.pth")
FORECAST_LIBS = ("/numpy/", "/sklearn/", "/scipy/", "numpy.libs", "scikit_learn.libs", "scipy.libs")


def mapped_libraries(pid: int) -> set[str]:
    """Files mapped into a process: every imported extension module is one."""
    with open(f"/proc/{pid}/maps", encoding="utf-8") as handle:
        return {line.split(None, 5)[5].strip() for line in handle if len(line.split(None, 5)) == 6}


def forecast_libraries(pid: int) -> list[str]:
    return sorted(path for path in mapped_libraries(pid) if any(part in path for part in FORECAST_LIBS))


class FreshVenvTests(TestCase):
    timeout = 600

    def test_pip_install_brings_forecasting(self):
        tmp = os.path.abspath(self.mktemp())
        venv = os.path.join(tmp, "venv")
        shared = os.path.join(tmp, "shared")
        os.makedirs(shared)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
        python = os.path.join(venv, "bin", "python")
        ours = sysconfig.get_paths()["purelib"]
        for name in os.listdir(ours):
            if not name.lower().startswith(HIDDEN):
                os.symlink(os.path.join(ours, name), os.path.join(shared, name))
        purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        with open(os.path.join(purelib, "shared.pth"), "w", encoding="utf-8") as handle:
            handle.write(shared + "\n")
        missing = subprocess.run([python, "-c", "import importlib.util as u; "
                                  "print([m for m in ('numpy', 'sklearn') if u.find_spec(m)])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        self.assertEqual(missing, "[]")  # not there before the install
        install = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", ROOT],
                                 capture_output=True, text=True, timeout=540)
        self.assertEqual(install.returncode, 0, install.stdout + install.stderr)
        code = (
            "import sys, os\n"
            "from twisted.internet import reactor\n"
            "from meteremu.config import parse_config\n"
            "import meteremu.app\n"
            "tmp = sys.argv[1]\n"
            "config = parse_config({'server': {'host': '127.0.0.1', 'http_port': 0},\n"
            "    'store': {'path': os.path.join(tmp, 'state.db')}, 'forecast': {'enabled': True},\n"
            "    'meters': {'grid': {'source': {'type': 'simulator', 'backfill': '1d'}}}}, '(test)', env={})\n"
            "app = meteremu.app.build(config, reactor)\n"
            "assert app.forecast is not None\n"
            "import numpy, sklearn.neural_network, meteremu\n"
            "print(numpy.__file__.startswith(sys.prefix), sklearn.__file__.startswith(sys.prefix),\n"
            "      meteremu.__file__.startswith(sys.prefix))\n")
        result = subprocess.run([python, "-c", code, tmp], capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "True True True")


class ForecastingOffTests(TestCase):
    """A started service (a fresh twistd process) with forecasting off maps neither library."""

    timeout = 120
    skip = None if os.path.exists("/proc/self/maps") else "needs /proc/<pid>/maps (Linux)"

    @inlineCallbacks
    def run_service(self, extra: str) -> object:
        directory = os.path.abspath(self.mktemp())
        proto = spawn(self, [*RUN, "--config", write_config(directory, extra=extra)], directory)
        port = yield proto.serving()
        http = HTTPClient(self)
        response, _ = yield http.get(f"http://127.0.0.1:{port}/ui/power?span=86400")  # the dashboard too
        self.assertEqual(response.code, 200)
        yield deferLater(reactor, 0.5, lambda: None)
        return proto

    @inlineCallbacks
    def test_off_maps_no_numpy_or_sklearn_and_on_does(self):
        off = yield self.run_service("")
        self.assertEqual(forecast_libraries(off.transport.pid), [])
        on = yield self.run_service("forecast: {enabled: true}\n")
        self.assertTrue(any("/numpy/" in path for path in forecast_libraries(on.transport.pid)))
