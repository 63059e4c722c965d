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


class DemoTests(TestCase):
    """etc/meteremu.yaml as a first ``scripts/run`` starts it: a trained forecast and its scores."""

    timeout = 240

    @inlineCallbacks
    def test_the_demo_shows_a_trained_forecast_on_backfilled_history(self):
        import json

        import yaml

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(ROOT, "etc", "meteremu.yaml"), encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
        data["server"] = {"host": "127.0.0.1", "http_port": 0}  # loopback, any port; the rest as shipped
        data["store"]["path"] = os.path.join(directory, "state.db")
        for device in data["devices"]:
            device.update(udp_ports=[], mdns=False)
            device.pop("modbus_port", None)
        config = os.path.join(directory, "meteremu.yaml")
        with open(config, "w", encoding="utf-8") as handle:
            yaml.safe_dump(data, handle)
        proto = spawn(self, [*RUN, "--config", config], directory)
        port = yield proto.serving()
        http = HTTPClient(self)
        power: dict = {}
        for _ in range(2000):  # bounded: a model, or the test's timeout
            response, body = yield http.get(f"http://127.0.0.1:{port}/ui/power?span=21600")
            power = json.loads(body)
            if power["model"] is not None:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertIsNotNone(power["model"], proto.output.decode(errors="replace")[-2000:])
        self.assertGreater(power["model"]["samples"], 13 * 8640)  # trained on the 14-day backfill
        self.assertIsNotNone(power["baselines"]["persistence"]["mae"])
        self.assertIsNotNone(power["skill"])
        self.assertEqual(len(power["forecast"]), 60)
        self.assertEqual(power["backfill"]["state"], "done")
        self.assertEqual(power["history_parts"][0]["source"], "backfill")
        self.assertIn("simulated", power["history_parts"][0]["label"])
        self.assertNotIn(b"Traceback", proto.output + proto.stderr)


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
