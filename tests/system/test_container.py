"""The container image and the Home Assistant add-on, built and run for real.

The image is built from the repository's unchanged Dockerfile by a private
dockerd the suite starts (tests/support/docker.py: offline, a Debian base made
with debootstrap when the named base is not present, wheels made here), then
run the way users run it: host networking (bound to loopback by the test's
config), a named volume on /data, a config mounted at /config, ``docker
stop``. The add-on image runs the way the Supervisor runs it: a generated
``/data/options.json``, ``SUPERVISOR_TOKEN`` in the environment, and a fake
Supervisor API (played by this test on loopback) offering a real mosquitto as
its MQTT service.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.support import docker as dk
from tests.support.fake_homeassistant import FakeHomeAssistant
from tests.support.mosquitto import Mosquitto, Subscriber, mosquitto_skip

START = 90.0  # seconds for a container to answer /healthz (a slow CI machine; start-up bytecode compiled at build)


def http(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - loopback
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def udp_rpc(port: int, method: str = "EM.GetStatus", host: str = "127.0.0.1") -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(json.dumps({"id": 1, "src": "test", "method": method, "params": {"id": 0}}).encode(),
                    (host, port))
        data, _ = sock.recvfrom(65535)
    answer: dict[str, Any] = json.loads(data)
    return answer


def wait_healthy(port: int, container: str) -> None:
    """Poll /healthz until 200; a container that exits first fails with its log."""
    deadline = time.monotonic() + START
    while time.monotonic() < deadline:
        try:
            if http(f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if dk.docker("inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true":
            break
        time.sleep(0.5)
    raise AssertionError(f"container never healthy:\n{dk.docker('logs', container, check=False).stderr[-3000:]}")


def config_dir(case: SynchronousTestCase, http_port: int, udp_port: int, modbus_port: int,
               extra: str = "") -> str:
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "meteremu.yaml")
    with open(path, "w") as file:
        file.write(f"""\
server: {{host: 127.0.0.1, http_port: {http_port}}}
meters:
  grid:
    source: {{type: simulator, interval: 200ms, speed: 60, seed: 3, start_time: "19:00"}}
store: {{path: /data/meteremu.db, persist_interval: 1h}}
devices:
  - type: shelly_pro_3em
    meter: grid
    udp_ports: [{udp_port}]
    modbus_port: {modbus_port}
    mdns: false
{extra}""")
    os.chmod(path, 0o644)
    return directory


def energy(port: int) -> float:
    """Imported plus exported energy: whichever way the simulated house runs, one of them grows."""
    status, body = http(f"http://127.0.0.1:{port}/rpc/EMData.GetStatus?id=0")
    assert status == 200, body
    data = json.loads(body)
    return float(data["total_act"]) + float(data["total_act_ret"])


class ContainerImageTests(SynchronousTestCase):
    skip = dk.docker_skip()

    def setUp(self) -> None:
        self.image = dk.image()

    def run_container(self, *args: str) -> str:
        name = f"meteremu-test-{secrets.token_hex(4)}"
        dk.docker("run", "-d", "--name", name, *args)
        self.addCleanup(dk.docker, "rm", "-f", name, check=False)
        return name

    def volume(self) -> str:
        name = f"meteremu-test-data-{secrets.token_hex(4)}"
        dk.docker("volume", "create", name)
        self.addCleanup(dk.docker, "volume", "rm", "-f", name, check=False)
        return name

    def test_serves_as_non_root_and_keeps_counters_and_mac_across_containers(self) -> None:
        """/shelly, UDP and /healthz answer; `docker stop` saves; a new container on the volume continues."""
        ports = dk.free_port(), dk.free_port(socket.SOCK_DGRAM), dk.free_port()
        conf, data = config_dir(self, *ports), self.volume()
        args = ("--network", "host", "-v", f"{data}:/data", "-v", f"{conf}:/config:ro", self.image)
        first = self.run_container(*args)
        wait_healthy(ports[0], first)
        status, body = http(f"http://127.0.0.1:{ports[0]}/shelly")
        self.assertEqual(status, 200)
        mac = json.loads(body)["mac"]
        self.assertEqual(len(mac), 12)
        self.assertIn("total_act_power", udp_rpc(ports[1])["result"])
        proc = dk.docker("exec", first, "cat", "/proc/1/status").stdout
        uid = next(line.split()[1] for line in proc.splitlines() if line.startswith("Uid:"))
        self.assertNotEqual(uid, "0")
        self.assertIn("twistd", dk.docker("exec", first, "cat", "/proc/1/cmdline").stdout)
        deadline = time.monotonic() + 30
        while (before := energy(ports[0])) <= 0 and time.monotonic() < deadline:
            time.sleep(0.3)
        self.assertGreater(before, 0)
        # persist_interval is 1 h: only the save on SIGTERM can carry the counters over.
        dk.docker("stop", "--time", "20", first)
        self.assertEqual(dk.docker("inspect", "--format", "{{.State.ExitCode}}", first).stdout.strip(), "0")
        dk.docker("rm", first)
        second = self.run_container(*args)
        wait_healthy(ports[0], second)
        self.assertEqual(json.loads(http(f"http://127.0.0.1:{ports[0]}/shelly")[1])["mac"], mac)
        self.assertGreaterEqual(energy(ports[0]), before)

    def test_default_runs_the_simulator_on_the_device_ports_and_reports_healthy(self) -> None:
        """No config, no root: ports 80/502/1010 and mDNS on the suite's bridge; HEALTHCHECK healthy."""
        name = self.run_container("--health-interval", "1s", "--health-start-period", "1s", self.image)
        deadline = time.monotonic() + START
        health = ""
        while time.monotonic() < deadline:
            health = dk.docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            if health == "healthy":
                break
            time.sleep(0.5)
        self.assertEqual(health, "healthy", dk.docker("logs", name, check=False).stdout[-3000:])
        ip = dk.address(name)
        self.assertEqual(http(f"http://{ip}:80/healthz")[0], 200)
        self.assertIn("total_act_power", udp_rpc(1010, host=ip)["result"])
        socket.create_connection((ip, 502), timeout=3).close()
        self.assertIn("simulator", dk.docker("logs", name).stdout)
        # A real mDNS client on the suite's bridge finds the device by name, at the container's address.
        from zeroconf import Zeroconf

        mac = json.loads(http(f"http://{ip}:80/shelly")[1])["mac"].lower()
        browser = Zeroconf(interfaces=[dk.BRIDGE_ADDRESS.split("/")[0]])
        try:
            info = browser.get_service_info("_shelly._tcp.local.", f"shellypro3em-{mac}._shelly._tcp.local.",
                                            timeout=15000)
        finally:
            browser.close()
        self.assertIsNotNone(info)
        assert info is not None
        self.assertEqual(info.parsed_addresses(), [ip])
        self.assertEqual(info.port, 80)

    def test_a_bad_config_ends_the_container_with_one_line(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "meteremu.yaml"), "w") as file:
            file.write("server: {http_port: banana}\n")
        os.chmod(directory, 0o755)
        name = self.run_container("--network", "none", "-v", f"{directory}:/config:ro", self.image)
        code = dk.docker("wait", name, timeout=60).stdout.strip()
        self.assertEqual(code, "2")
        errors = dk.docker("logs", name).stderr.strip().splitlines()
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("http_port", errors[0])


class ImageVariantTests(SynchronousTestCase):
    """The default image stays small; forecasting is the ``FORECAST=1`` variant's."""

    skip = dk.docker_skip()

    def test_the_default_image_is_under_200_mb_and_refuses_forecasting_in_one_line(self) -> None:
        image = dk.image()
        self.assertLess(dk.image_size(image), 200e6)
        done = dk.docker("run", "--rm", "--network", "none", "-e",
                         "METEREMU_CONFIG_YAML=forecast: {enabled: true}\n", image, check=False, timeout=60)
        self.assertEqual(done.returncode, 2)
        errors = done.stderr.strip().splitlines()
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("forecast.enabled", errors[0])
        self.assertIn("FORECAST=1", errors[0])

    def test_the_forecast_variant_trains_a_model(self) -> None:
        """numpy, SciPy and scikit-learn work there, without the bytecode the build leaves out."""
        code = ("import numpy as np; from sklearn.neural_network import MLPRegressor; "
                "x = np.linspace(0, 1, 200).reshape(-1, 1); "
                "m = MLPRegressor(hidden_layer_sizes=(8,), max_iter=300, random_state=0).fit(x, 2 * x.ravel()); "
                "print(round(float(m.score(x, 2 * x.ravel())), 2))")
        done = dk.docker("run", "--rm", "--network", "none", "--entrypoint", "python",
                         dk.image(forecast=True), "-c", code, timeout=120)
        self.assertGreater(float(done.stdout.strip()), 0.5)  # an untrained model scores ≤ 0


class FakeSupervisor(Resource):
    """The Supervisor API an add-on sees: ``/services/mqtt`` and the Core proxy (token checked).

    ``/core/api/…`` and ``/core/websocket`` lead to a fake Home Assistant
    (tests/support/fake_homeassistant.py) whose token is the add-on's
    ``SUPERVISOR_TOKEN``, as the real proxy accepts it.
    """

    def __init__(self, token: str, mqtt: dict[str, Any], core: FakeHomeAssistant) -> None:
        super().__init__()
        self.token, self.mqtt, self.asked = token, mqtt, 0
        proxy = Resource()
        proxy.putChild(b"api", core.site.resource.children[b"api"])
        proxy.putChild(b"websocket", WebSocketResource(core.factory))
        self.putChild(b"core", proxy)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if request.getHeader("authorization") != f"Bearer {self.token}":
            request.setResponseCode(401)
            return b'{"result": "error", "message": "Unauthorized"}'
        if request.path == b"/services/mqtt":
            self.asked += 1
            return json.dumps({"result": "ok", "data": self.mqtt}).encode()
        request.setResponseCode(404)
        return b'{"result": "error", "message": "not found"}'


class AddonTests(TestCase):
    skip = dk.docker_skip() or mosquitto_skip()
    timeout = 600

    @defer.inlineCallbacks
    def test_runs_as_the_supervisor_runs_it(self) -> Any:
        """Options → config; HA entities through the Core proxy; MQTT service; ingress; no secret logged."""
        image = dk.addon_image()
        broker = Mosquitto(self, users={"addons": "pw-from-the-supervisor"})
        yield broker.start()
        token = secrets.token_hex(16)
        core = FakeHomeAssistant(token=token)
        core.set_state("sensor.grid_power", "1234.5", {"unit_of_measurement": "W", "device_class": "power",
                                                         "state_class": "measurement"})
        supervisor = FakeSupervisor(token, {"addon": "core_mosquitto", "host": "127.0.0.1", "port": broker.port,
                                            "ssl": False, "protocol": "3.1.1", "username": "addons",
                                            "password": "pw-from-the-supervisor"}, core)
        port: IListeningPort = reactor.listenTCP(0, Site(supervisor), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(core.drop_connections)
        subscriber = Subscriber(self, broker, ("meters/#",), username="addons", password="pw-from-the-supervisor")
        yield subscriber.connect()
        http_port, udp_port = dk.free_port(), dk.free_port(socket.SOCK_DGRAM)
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        # The real add-on listens on 80 with the ingress proxy at 172.30.32.2; here loopback stands in.
        custom = (f"server: {{host: 127.0.0.1, http_port: {http_port}, ingress_proxies: [127.0.0.1]}}\n")
        options = {"source": "homeassistant", "ha_power": "sensor.grid_power", "udp_ports": [udp_port],
                   "modbus": False, "mdns": False, "forecast": False, "mqtt_publish": True, "log_level": "info",
                   "custom_config": custom}
        with open(os.path.join(data, "options.json"), "w") as file:
            json.dump(options, file)
        name = f"meteremu-test-addon-{secrets.token_hex(4)}"
        dk.docker("run", "-d", "--name", name, "--network", "host", "-v", f"{data}:/data",
                  "-e", f"SUPERVISOR_TOKEN={token}",
                  "-e", f"METEREMU_SUPERVISOR_URL=http://127.0.0.1:{port.getHost().port}", image)
        self.addCleanup(dk.docker, "rm", "-f", name, check=False)
        message = yield subscriber.wait("meters/homeassistant/grid/total_act_power",
                                        where=lambda m: abs(float(m.text) - 1234.5) < 0.01, timeout=START)
        self.assertTrue(message.retain)
        self.assertEqual(supervisor.asked, 1)
        self.assertAlmostEqual(udp_rpc(udp_port)["result"]["total_act_power"], 1234.5, places=1)
        status, page = http(f"http://127.0.0.1:{http_port}/ui", headers={
            "Host": "homeassistant.local:8123", "X-Ingress-Path": "/api/hassio_ingress/tok3n"})
        self.assertEqual(status, 200)
        logs = dk.docker("logs", name)
        for secret in (token, "pw-from-the-supervisor"):
            self.assertNotIn(secret, logs.stdout + logs.stderr)
        dk.docker("stop", "--time", "20", name)
        self.assertTrue(os.path.exists(os.path.join(data, "meteremu.db")))

    def test_a_bad_option_is_one_line_in_the_addon_log(self) -> None:
        image = dk.addon_image()
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        with open(os.path.join(data, "options.json"), "w") as file:
            json.dump({"source": "envoy"}, file)
        name = f"meteremu-test-addon-{secrets.token_hex(4)}"
        dk.docker("run", "-d", "--name", name, "--network", "none", "-v", f"{data}:/data", image)
        self.addCleanup(dk.docker, "rm", "-f", name, check=False)
        self.assertEqual(dk.docker("wait", name, timeout=60).stdout.strip(), "2")
        errors = dk.docker("logs", name).stderr.strip().splitlines()
        self.assertEqual(errors, ["meteremu add-on: option envoy_host: needed for source envoy"])
