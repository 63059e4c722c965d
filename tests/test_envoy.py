"""Tests for meteremu.sources.envoy (specs/envoy.md §8, the issue's conformance list).

* Pure parsers, table-driven from ``tests/fixtures/envoy/derived_expectations.json``
  over every fixture folder (``SynchronousTestCase``).
* Auth helpers: JWT claims and refresh rule, installer password, Digest.
* Scheduling (alignment, backoff with jitter, recovery, one slow task per cycle)
  on a ``task.Clock`` with an in-memory Envoy.
* Real sockets on 127.0.0.1: a fake Envoy over HTTPS (self-signed certificate
  made by the test, pinned by fingerprint) replays every fixture folder; the
  auth flows run against a fake Enlighten/Entrez cloud over verified HTTPS;
  one end-to-end test reads the Envoy's phases over the Shelly UDP transport.

Nothing here contacts any address but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meteremu.config import ConfigError, parse_config
from meteremu.meter import Freshness, Meter
from meteremu.sources.envoy import Options, make_source, parse
from meteremu.sources.envoy.auth import (
    AuthError,
    DigestAuth,
    Redactor,
    TokenManager,
    decode_jwt,
    digest_response,
    envoy_password,
    installer_password,
)
from meteremu.sources.envoy.client import EnvoySource, aligned_delay
from meteremu.sources.envoy.options import EnvoyOptions, normalise_fingerprint
from meteremu.sources.envoy.parse import (
    EnvoyParseError,
    MissingSample,
    NoGridData,
)
from tests.support import HTTPClient, start_app, test_config
from tests.support.fake_envoy import (
    FakeCloud,
    FakeEnvoy,
    expectations,
    fixture_path,
    folders,
    make_jwt,
)
from tests.support.udp import Battery, free_udp_ports

EXPECT = expectations()
TOL = 0.002
DAY = 86400.0


def load(folder: str, name: str) -> Any:
    with open(fixture_path(folder, name), "rb") as handle:
        body = handle.read()
    try:
        return json.loads(body)
    except ValueError:
        raise EnvoyParseError(f"{name} is not JSON") from None


def has(folder: str, name: str) -> bool:
    return os.path.isfile(fixture_path(folder, name))


def meters_of(folder: str) -> tuple[parse.CTConfig, ...]:
    return parse.parse_meters(load(folder, "ivp_meters")) if has(folder, "ivp_meters") else ()


def expected_grid(folder: str) -> tuple[list[float], tuple[float, float] | None] | None:
    """Per-phase grid power (and lifetime import/export) the readings path must give.

    From derived_expectations: the enabled net CT's first-phaseCount channels;
    with a total-consumption CT, total minus production per channel; else none.
    """
    readings = {r["measurementType"]: r for r in EXPECT[folder].get("readings", [])}
    net = readings.get("net-consumption")
    if net is not None and net["state"] == "enabled":
        return net["channels_activePower_first_phaseCount"], (net["actEnergyDlvd"], net["actEnergyRcvd"])
    total, prod = readings.get("total-consumption"), readings.get("production")
    if total and prod and total["state"] == prod["state"] == "enabled":
        return [t - p for t, p in zip(total["channels_activePower_first_phaseCount"],
                                      prod["channels_activePower_first_phaseCount"], strict=True)], None
    return None


# Folders whose net-CT channels add up to the aggregate counters; the curated
# 7.3.466/7.6.175 readings mix systems (tests/fixtures/envoy/README.md, caveats).
CONSISTENT_READINGS = ("8.3.5167_3rd-pv", "8.2.4286_with_3cts_and_battery_split",
                       "8.3.5169_with_generator", "8.2.4345_with_device_data", "4.10.35",
                       "7.3.517_system_2", "8.2.4382_ACB", "7.6.185_with_cts_and_battery_3t")


def channel_energy(folder: str) -> list[tuple[float, float]]:
    """(actEnergyDlvd, actEnergyRcvd) of the net CT's first phaseCount channels, from the file."""
    net = next(m for m in meters_of(folder) if m.measurement_type == "net-consumption")
    raw = next(r for r in load(folder, "ivp_meters_readings") if r["eid"] == net.eid)
    return [(c["actEnergyDlvd"], c["actEnergyRcvd"]) for c in raw["channels"][: net.phase_count]]


class Approx:
    def assertClose(self, first: float, second: float, tol: float = TOL, msg: str | None = None) -> None:
        self.assertLessEqual(abs(first - second), tol, msg or f"{first} != {second} (±{tol})")  # type: ignore[attr-defined]

    def assertAllClose(self, first: Any, second: Any, tol: float = TOL, msg: str = "") -> None:
        first, second = list(first), list(second)
        self.assertEqual(len(first), len(second), f"{msg}: {first} vs {second}")  # type: ignore[attr-defined]
        for a, b in zip(first, second, strict=True):
            self.assertClose(a, b, tol, f"{msg}: {first} != {second}")


# =====================================================================================
# pure parsers, every folder
# =====================================================================================


class InfoTests(SynchronousTestCase):
    def test_every_folder(self) -> None:
        for folder in folders():
            with open(fixture_path(folder, "info"), "rb") as handle:
                info = parse.parse_info(handle.read())
            want = EXPECT[folder]["info"]
            self.assertEqual(info.serial, want["sn"], folder)
            self.assertEqual(info.software, want["software"], folder)
            self.assertEqual(info.firmware, want["software"][1:], folder)
            self.assertEqual(info.imeter, None if want["imeter"] is None else want["imeter"] == "true", folder)
            self.assertEqual(info.web_tokens, None if want["web_tokens"] is None else want["web_tokens"] == "true")
            self.assertEqual(info.uses_tokens, info.version >= (7,), folder)

    def test_spec_check_1(self) -> None:
        def info(folder: str) -> parse.EnvoyInfo:
            with open(fixture_path(folder, "info"), "rb") as handle:
                return parse.parse_info(handle.read())

        new = info("7.6.175_with_cts_3phase")
        self.assertEqual((new.serial, new.firmware, new.imeter, new.web_tokens, new.uses_tokens),
                         ("122238082763", "7.6.175", True, True, True))
        old = info("5.0.62")
        self.assertEqual((old.serial, old.firmware, old.imeter, old.web_tokens, old.uses_tokens),
                         ("121621012167", "5.0.62", False, None, False))
        self.assertEqual(info("3.9.36").firmware, "3.9.36")
        self.assertEqual(info("3.9.36").version, (3, 9, 36))
        self.assertTrue(info("4.10.35").imeter)

    def test_versions_and_garbage(self) -> None:
        self.assertEqual(parse.parse_version("M4.2.33"), ("4.2.33", (4, 2, 33)))
        self.assertEqual(parse.parse_version("D8.3.5167"), ("8.3.5167", (8, 3, 5167)))
        self.assertRaises(EnvoyParseError, parse.parse_version, "Dx")
        self.assertRaises(EnvoyParseError, parse.parse_info, b"<html>not the info</html>")
        self.assertRaises(EnvoyParseError, parse.parse_info, b"{not xml")


class LogFileTests(SynchronousTestCase):
    def test_every_log_json_has_headers_and_code(self) -> None:
        count = 0
        for folder in folders():
            for name in os.listdir(fixture_path(folder)):
                if name.endswith("_log.json"):
                    data = load(folder, name)
                    self.assertIsInstance(data["headers"], dict, name)
                    self.assertIsInstance(data["code"], int, name)
                    count += 1
        self.assertGreater(count, 200)

    def test_digest_challenge_of_5_0_62(self) -> None:
        header = load("5.0.62", "production_log.json")["headers"]["www-authenticate"]
        scheme, params = parse.parse_challenge(header)
        self.assertEqual(scheme, "digest")
        self.assertEqual(params["qop"], "auth")
        self.assertEqual(params["realm"], "enphaseenergy.com")
        self.assertEqual(params["nonce"], "Td4AZZWMIuPzNdOwn+N1MAFCm9k=")
        self.assertEqual(load("5.0.62", "production_log.json")["code"], 401)


class MetersAndReadingsTests(SynchronousTestCase, Approx):
    def test_meters_every_folder(self) -> None:
        for folder in folders():
            if "meters" not in EXPECT[folder]:
                continue
            got = [(m.eid, m.measurement_type, m.state, m.phase_mode, m.phase_count) for m in meters_of(folder)]
            want = [(m["eid"], m["measurementType"], m["state"], m["phaseMode"], m["phaseCount"])
                    for m in EXPECT[folder]["meters"]]
            self.assertEqual(got, want, folder)

    def test_readings_every_folder(self) -> None:
        checked = 0
        for folder in folders():
            if not EXPECT[folder].get("readings"):
                continue
            readings = parse.parse_readings(load(folder, "ivp_meters_readings"), meters_of(folder))
            self.assertEqual(len(readings), len(EXPECT[folder]["readings"]), folder)
            for want in EXPECT[folder]["readings"]:
                got = readings[want["measurementType"]]
                self.assertEqual(got.eid, want["eid"], folder)
                self.assertEqual(got.state, want["state"], folder)
                self.assertClose(got.total.active_power, want["activePower"])
                self.assertClose(got.total.energy_dlvd, want["actEnergyDlvd"])
                self.assertClose(got.total.energy_rcvd, want["actEnergyRcvd"])
                self.assertAllClose([c.active_power for c in got.channels],
                                    want["channels_activePower_first_phaseCount"], msg=folder)
                checked += 1
        self.assertGreater(checked, 20)

    def test_unlisted_eid_is_ignored(self) -> None:
        readings = parse.parse_readings(load("8.3.5167_3rd-pv", "ivp_meters_readings"),
                                        meters_of("8.3.5167_3rd-pv"))
        self.assertEqual({r.eid for r in readings.values()}, {704643328, 704643584})
        raw_eids = {m["eid"] for m in load("8.3.5167_3rd-pv", "ivp_meters_readings")}
        self.assertIn(1023410688, raw_eids)

    def test_not_metered(self) -> None:
        self.assertEqual(parse.parse_meters([]), ())
        self.assertEqual(parse.parse_meters({"error": "404 - Not Found"}), ())
        self.assertEqual(parse.parse_readings([], ()), {})
        self.assertRaises(EnvoyParseError, parse.parse_readings, {"error": "x"}, ())


class GridFromReadingsTests(SynchronousTestCase, Approx):
    def test_every_folder_matches_the_expectations(self) -> None:
        for folder in folders():
            expected = expected_grid(folder)
            meters = meters_of(folder)
            raw = load(folder, "ivp_meters_readings") if has(folder, "ivp_meters_readings") else []
            readings = parse.parse_readings(raw, meters)
            if expected is None:
                self.assertRaises(NoGridData, parse.grid_from_readings, readings)
                continue
            powers, energy = expected
            sample = parse.grid_from_readings(readings)
            self.assertEqual(sample.origin, "readings")
            self.assertAllClose(sample.powers(), powers, msg=folder)
            if energy is None:
                self.assertIsNone(sample.energy, folder)
            else:
                assert sample.energy is not None
                self.assertEqual(list(sample.energy), channel_energy(folder), folder)
                if folder in CONSISTENT_READINGS:
                    self.assertClose(sum(e[0] for e in sample.energy), energy[0], 0.1, folder)
                    self.assertClose(sum(e[1] for e in sample.energy), energy[1], 0.1, folder)

    def test_spec_checks_6_8_9_18_20(self) -> None:
        def grid(folder: str) -> parse.GridSample:
            return parse.grid_from_readings(parse.parse_readings(load(folder, "ivp_meters_readings"),
                                                                 meters_of(folder)))

        s = grid("8.3.5167_3rd-pv")
        self.assertAllClose(s.powers(), [-2879.825, -877.472, -1154.943])
        self.assertClose(sum(e[0] for e in s.energy), 99056.453, 0.01)
        self.assertClose(sum(e[1] for e in s.energy), 415089.21, 0.01)
        s = grid("8.2.4286_with_3cts_and_battery_split")
        self.assertAllClose(s.powers(), [809.907, 939.597])  # the junk 3rd channel is dropped
        self.assertClose(sum(s.powers()), 1749.504)
        ch = s.phases[0]
        self.assertEqual((ch.voltage, ch.current, ch.pf, ch.freq), (123.482, 11.642, 0.563, 60.0))
        self.assertClose(ch.aprt_power, 1438.017)
        self.assertAllClose(grid("8.3.5169_with_generator").powers(), [-271.656, 432.145])
        self.assertEqual(grid("8.3.5169_with_generator").phases[0].pf, -1.0 * abs(
            grid("8.3.5169_with_generator").phases[0].pf))  # pf follows the power's sign
        self.assertAllClose(grid("4.10.35").powers(), [393.965, 172.899])
        self.assertAllClose(grid("7.3.517_system_2").powers(), [-17.438, 40.61])

    def test_total_consumption_ct_gives_load_minus_production(self) -> None:
        s = parse.grid_from_readings(parse.parse_readings(
            load("8.3.5433_tot_is_net_cons", "ivp_meters_readings"), meters_of("8.3.5433_tot_is_net_cons")))
        self.assertAllClose(s.powers(), [431.202 - 180.664, 364.572 - 179.906])
        self.assertIsNone(s.energy)  # no grid counters: the Meter integrates
        self.assertClose(s.phases[0].voltage, 121.332, 1.0)

    def test_disabled_cts_give_no_grid_data(self) -> None:
        for folder in ("7.6.175_total", "8.2.4264_metered_noct"):
            readings = parse.parse_readings(load(folder, "ivp_meters_readings"), meters_of(folder))
            with self.assertRaises(NoGridData) as caught:
                parse.grid_from_readings(readings)
            self.assertIn("disabled", str(caught.exception))


def production_report(folder: str) -> parse.ProductionReport:
    name = EXPECT[folder]["production_source_file"]
    return parse.parse_production(load(folder, name))


class ProductionTests(SynchronousTestCase, Approx):
    def test_every_folder_entries(self) -> None:
        keys = {"eim_production": "production", "eim_total_consumption": "total",
                "eim_net_consumption": "net"}
        for folder in folders():
            want = EXPECT[folder]
            if want["production_source_file"] is None:
                self.assertRaises(EnvoyParseError, lambda f=folder: parse.parse_production(load(f, "production.json")))
                continue
            report = production_report(folder)
            inv = want.get("inverters_entry")
            if inv:
                self.assertEqual((report.inverters.active_count, report.inverters.w_now,
                                  report.inverters.wh_lifetime),
                                 (inv["activeCount"], inv["wNow"], inv["whLifetime"]), folder)
            for key, attr in keys.items():
                entry = getattr(report, attr)
                if key not in want:
                    self.assertIsNone(entry, folder)
                    continue
                self.assertEqual(entry.active_count, want[key]["activeCount"], folder)
                self.assertClose(entry.w_now, want[key]["wNow"])
                self.assertClose(entry.wh_lifetime, want[key]["whLifetime"])
                self.assertEqual(len(entry.lines), want[key]["n_lines"], folder)
                self.assertEqual(sum(line.active for line in entry.lines), want[key]["n_active_lines"])
                self.assertAllClose([x.w_now for x in entry.lines], want[key]["lines_wNow"], msg=folder)
                self.assertAllClose([x.rms_voltage for x in entry.lines], want[key]["lines_rmsVoltage"])
            acb = want.get("acb")
            if acb:
                self.assertEqual((report.acb.active_count, report.acb.w_now, report.acb.wh_now,
                                  report.acb.state), (acb["activeCount"], acb["wNow"], acb["whNow"],
                                                      acb["state"]), folder)

    def test_grid_from_production_every_folder(self) -> None:
        for folder in folders():
            want = EXPECT[folder]
            if want["production_source_file"] is None:
                continue
            report = production_report(folder)
            phase_count = parse.grid_phase_count(meters_of(folder))
            net = want.get("eim_net_consumption")
            if net is None:
                self.assertRaises(NoGridData, parse.grid_from_production, report, phase_count)
                continue
            if net["activeCount"] == 0:
                self.assertRaises(MissingSample, parse.grid_from_production, report, phase_count)
                continue
            sample = parse.grid_from_production(report, phase_count)
            self.assertEqual(sample.origin, "production")
            lines = net["lines_wNow"][:phase_count] if phase_count else net["lines_wNow"]
            if lines:
                self.assertAllClose(sample.powers(), lines, msg=folder)
                imports = [max(p, 0.0) for p in sample.powers()]
                exports = [max(-p, 0.0) for p in sample.powers()]
                self.assertAllClose(imports, net["lines_import_W"][:len(lines)], msg=folder)
                self.assertAllClose(exports, net["lines_export_W"][:len(lines)], msg=folder)
            else:  # no lines: the aggregate on phase A
                self.assertAllClose(sample.powers(), [net["wNow"]], msg=folder)
            self.assertIsNone(sample.energy)

    def test_spec_checks_5_7_9_11(self) -> None:
        r = production_report("8.3.5167_3rd-pv")
        self.assertAllClose([x.w_now for x in r.net.lines], [-2932.704, -886.257, -1161.306])
        for p, n, t in zip(r.production.lines, r.net.lines, r.total.lines, strict=True):
            self.assertClose(p.w_now + n.w_now, t.w_now)
        self.assertAllClose([x.rms_voltage for x in r.net.lines], [237.835, 229.824, 226.938])
        r = production_report("7.3.466_with_cts_3phase")
        self.assertAllClose([x.w_now for x in r.production.lines], [-2.864, 0.0, -3.617])
        self.assertEqual((r.inverters.w_now, r.inverters.active_count, r.inverters.reading_time), (0, 7, None))
        r = production_report("8.3.5169_with_generator")
        sample = parse.grid_from_production(r, 2)
        self.assertAllClose(sample.powers(), [-295.092, 460.393])
        self.assertClose(r.net.w_now, 165.301)
        self.assertEqual(sample.phases[0].current, 7.688)  # signed on 8.x, unsigned here
        self.assertEqual(sample.phases[0].aprt_power, 954.385)
        self.assertEqual(parse.parse_production(load("8.3.5169_with_generator", "production.json")).net.lines, ())
        self.assertAllClose(parse.grid_from_production(production_report("8.2.4345_with_device_data"),
                                                       1).powers(), [279.186])

    def test_8_3_5433_total_is_a_copy_of_net(self) -> None:
        r = production_report("8.3.5433_tot_is_net_cons")
        self.assertTrue(r.total_is_net_copy())
        w, wh = r.corrected_total()
        self.assertClose(w, 785.906)
        self.assertClose(wh, 20054867.535)
        self.assertAllClose(r.corrected_total_lines()[:2], [424.051, 361.854])
        self.assertAllClose(parse.grid_from_production(r, 2).powers(), [249.477, 178.936])
        # without /ivp/meters, the all-zero third line is dropped
        self.assertEqual(len(parse.grid_from_production(r, None).phases), 2)
        other = production_report("8.2.4286_with_3cts_and_battery_split")
        self.assertFalse(other.total_is_net_copy())
        self.assertEqual(other.corrected_total(), (other.total.w_now, other.total.wh_lifetime))

    def test_tolerant_of_missing_parts(self) -> None:
        r = parse.parse_production({"production": [{"type": "eim", "measurementType": "production",
                                                     "activeCount": "1", "wNow": 5}]})
        self.assertIsNone(r.net)
        self.assertEqual(r.production.w_now, 5.0)
        r = parse.parse_production({"consumption": [{"type": "eim", "measurementType": "net-consumption",
                                                     "activeCount": 1, "wNow": -12}]})
        self.assertEqual(parse.grid_from_production(r).powers(), (-12.0,))
        self.assertRaises(EnvoyParseError, parse.parse_production, [])
        self.assertRaises(EnvoyParseError, parse.parse_production, {"error": "404"})


class SummaryAndInverterTests(SynchronousTestCase):
    def test_api_v1_production_every_folder(self) -> None:
        for folder in folders():
            want = EXPECT[folder].get("api_v1_production")
            if want is None:
                continue
            s = parse.parse_production_summary(load(folder, "api_v1_production"))
            self.assertEqual((s.watts_now, s.wh_today, s.wh_seven_days, s.wh_lifetime),
                             (want["wattsNow"], want["wattHoursToday"], want["wattHoursSevenDays"],
                              want["wattHoursLifetime"]), folder)
            # 7.3.517 reports about the lifetime as "seven days" (spec §4.2); so does 8.2.4286,
            # and 8.2.4264's counters are stalled (seven days == lifetime, today 0)
            self.assertEqual(s.seven_days_plausible, folder not in (
                "7.3.517_system_2", "8.2.4286_with_3cts_and_battery_split", "8.2.4264_metered_noct"), folder)

    def test_inverters_every_folder(self) -> None:
        for folder in folders():
            want = EXPECT[folder].get("inverters_list")
            if want is None:
                continue
            raw = load(folder, "api_v1_production_inverters")
            micro = parse.parse_inverters(raw)
            self.assertEqual(len(micro), want["count_devType1"], folder)
            self.assertEqual(len(parse.parse_inverters(raw, include_all=True)), want["count_all"])
            self.assertEqual(sum(r.watts for r in micro), want["sum_lastReportWatts_devType1"], folder)
            self.assertEqual(max(r.last_report_date for r in micro), want["max_lastReportDate"], folder)

    def test_acb_rows_are_not_inverters(self) -> None:
        raw = load("8.2.4382_ACB", "api_v1_production_inverters")
        micro = parse.parse_inverters(raw)
        self.assertEqual((len(raw), len(micro), sum(r.watts for r in micro)), (20, 17, 180))
        self.assertEqual(production_report("8.2.4382_ACB").inverters.active_count, 17)

    def test_tracker_reports_only_moved_inverters(self) -> None:
        tracker = parse.InverterTracker()
        rows = [parse.InverterReport("a", 100, 10.0, None, 1), parse.InverterReport("b", 100, 20.0, None, 1)]
        self.assertEqual(tracker.update(rows), [])  # the first poll only learns the dates
        self.assertEqual(tracker.update(rows), [])
        moved = [parse.InverterReport("a", 400, 11.0, None, 1), rows[1]]
        self.assertEqual([r.serial for r in tracker.update(moved)], ["a"])
        self.assertEqual(tracker.update(moved), [])
        self.assertEqual([r.serial for r in tracker.update(moved + [parse.InverterReport("c", 5, 1.0, None, 1)])],
                         ["c"])


class TotalsTests(SynchronousTestCase, Approx):
    def extras(self, folder: str) -> dict[str, float]:
        try:
            report = production_report(folder) if EXPECT[folder]["production_source_file"] else None
        except EnvoyParseError:
            report = None
        summary = (parse.parse_production_summary(load(folder, "api_v1_production"))
                   if has(folder, "api_v1_production") and parse.needs_summary(report) else None)
        return parse.totals_extras(report, summary)

    def test_spec_checks_13_to_17(self) -> None:
        e = self.extras("7.6.114_without_cts")
        self.assertEqual((e["pv_power"], e["pv_energy_wh"]), (586, 1544282))  # unwrapped
        self.assertNotIn("load_power", e)
        self.assertEqual(1544282 - 351236, 1193046)  # exactly one 2^32 W·s wrap
        e = self.extras("8.2.4264_metered_noct")
        self.assertEqual((e["pv_power"], e["pv_energy_wh"]), (5521, 32465106))  # not the stalled 1583
        self.assertNotIn("load_power", e)
        e = self.extras("7.6.175_total")
        self.assertEqual((e["pv_power"], e["pv_energy_wh"]), (1322, 1152866))
        e = self.extras("5.0.62")
        self.assertEqual(e["pv_power"], 7904)
        self.assertEqual(e["pv_energy_wh"], 133798554)
        e = self.extras("3.9.36")
        self.assertEqual((e["pv_power"], e["pv_energy_wh"]), (1271, 6012540))

    def test_metered_totals(self) -> None:
        e = self.extras("8.3.5433_tot_is_net_cons")
        self.assertClose(e["load_power"], 785.906)
        self.assertClose(e["load_energy_wh"], 20054867.535)
        self.assertClose(e["pv_power"], 357.492)
        e = self.extras("8.2.4382_ACB")
        self.assertEqual((e["acb_power"], e["acb_energy_wh"], e["acb_soc"]), (260, 930, 25))
        self.assertClose(e["pv_power"], 311.12)
        for folder in folders():
            for key, value in self.extras(folder).items():
                self.assertIsInstance(value, float | int, f"{folder} {key}")


LIVEDATA_DOC = {
    "connection": {"mqtt_state": "connected", "prov_state": "configured", "auth_state": "ok",
                   "sc_stream": "enabled", "sc_debug": "disabled"},
    "meters": {"last_update": 1686081089, "soc": 0, "main_relay_state": 1, "gen_relay_state": 5,
               "backup_bat_mode": 1, "backup_soc": 0,
               "pv": {"agg_p_mw": 29212, "agg_s_mva": 248309},
               "storage": {"agg_p_mw": 0, "agg_s_mva": 0},
               "grid": {"agg_p_mw": 340582, "agg_s_mva": 934790},
               "load": {"agg_p_mw": 369794, "agg_s_mva": 1183099},
               "generator": {"agg_p_mw": 0, "agg_s_mva": 0}},
    "tasks": {"task_id": 1813978567, "timestamp": 1685743309},
    "counters": {"main_CfgLoad": 1, "MqttClient_publish": 280675, "rest_Status": 71872},
}


def livedata_three_phase(stream: str = "enabled", last_update: int = 1686081089) -> dict[str, Any]:
    data = json.loads(json.dumps(LIVEDATA_DOC))
    data["connection"]["sc_stream"] = stream
    data["meters"]["last_update"] = last_update
    data["meters"]["phase_count"] = 3
    data["meters"]["grid"].update({"agg_p_ph_a_mw": 1200000, "agg_p_ph_b_mw": -300500, "agg_p_ph_c_mw": 7000})
    return data


class LivedataTests(SynchronousTestCase, Approx):
    def test_documented_example(self) -> None:
        live = parse.parse_livedata(LIVEDATA_DOC)
        self.assertTrue(live.stream_enabled)
        self.assertClose(live.grid_w, 340.582)
        self.assertClose(live.pv_w + live.grid_w + live.storage_w, live.load_w)
        sample = parse.grid_from_livedata(live)
        self.assertAllClose(sample.powers(), [340.582])  # aggregate only: on phase A
        self.assertEqual(sample.measured_at, 1686081089)

    def test_per_phase_values_and_disabled_stream(self) -> None:
        live = parse.parse_livedata(livedata_three_phase())
        sample = parse.grid_from_livedata(live, None, voltages=(231.0, 229.0))
        self.assertAllClose(sample.powers(), [1200.0, -300.5, 7.0])
        self.assertEqual([p.voltage for p in sample.phases], [231.0, 229.0, 230.0])
        self.assertEqual(len(parse.grid_from_livedata(live, 2).phases), 2)
        off = parse.parse_livedata(livedata_three_phase(stream="disabled"))
        self.assertRaises(MissingSample, parse.grid_from_livedata, off)
        self.assertRaises(NoGridData, parse.grid_from_livedata, parse.parse_livedata({"meters": {}}))
        self.assertRaises(EnvoyParseError, parse.parse_livedata, [])


# =====================================================================================
# auth helpers
# =====================================================================================


class AuthHelperTests(SynchronousTestCase):
    def test_installer_and_envoy_passwords(self) -> None:
        self.assertEqual(installer_password("122112123456"), "d525d2jh")
        self.assertEqual(installer_password("123456789012"), "7edE24ed")
        self.assertEqual(envoy_password("123456789012"), "789012")

    def test_jwt_lifetimes(self) -> None:
        installer = decode_jwt(make_jwt("122024035221", user_type="installer", iat=1694723525,
                                        exp=1694766725))
        self.assertEqual((installer.lifetime, installer.user_type, installer.aud, installer.iss),
                         (43200, "installer", "122024035221", "Entrez"))
        owner = decode_jwt(make_jwt("1", iat=1701138920, exp=1732674920))
        self.assertEqual(owner.lifetime, 365 * DAY)
        self.assertEqual(owner.user_type, "owner")

    def test_base64url_without_padding_and_not_verified(self) -> None:
        for extra in ("", "x", "xy", "xyz"):  # payload lengths that need 0-3 padding characters
            token = make_jwt("123", username=f"u{extra}@example.com")
            self.assertNotIn("=", token)
            self.assertEqual(decode_jwt(token).username, f"u{extra}@example.com")
        token = make_jwt("123")
        tampered = token.rsplit(".", 1)[0] + ".not-a-signature"
        self.assertEqual(decode_jwt(tampered).aud, "123")

    def test_bad_tokens_do_not_echo_the_token(self) -> None:
        for bad in ("secret-without-dots", "a.b", "aaa.%%%%.ccc", "aaa.bnVsbA.ccc"):
            with self.assertRaises(AuthError) as caught:
                decode_jwt(bad)
            self.assertNotIn(bad, str(caught.exception))

    def test_refresh_rule(self) -> None:
        now = 1_800_000_000.0
        owner = decode_jwt(make_jwt("1", iat=now - 335 * DAY, exp=now + 30 * DAY - 60))
        self.assertTrue(owner.refresh_due(now))
        owner = decode_jwt(make_jwt("1", iat=now - 300 * DAY, exp=now + 65 * DAY))
        self.assertFalse(owner.refresh_due(now))
        installer = decode_jwt(make_jwt("1", user_type="installer", iat=now - 11.5 * 3600,
                                        exp=now + 1800))
        self.assertTrue(installer.refresh_due(now))
        installer = decode_jwt(make_jwt("1", user_type="installer", iat=now - 3600, exp=now + 11 * 3600))
        self.assertFalse(installer.refresh_due(now))
        self.assertTrue(installer.expired(now + 11 * 3600))

    def test_digest_rfc2617_example(self) -> None:
        params = {"realm": "testrealm@host.com", "qop": "auth,auth-int",
                  "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093", "opaque": "5ccc069c403ebaf9f0171e9517f40e41"}
        header = digest_response("GET", "/dir/index.html", params, "Mufasa", "Circle Of Life", 1, "0a4f113b")
        self.assertIn('response="6629fae49393a05397450978507c4ef1"', header)
        self.assertIn("nc=00000001", header)
        self.assertIn('opaque="5ccc069c403ebaf9f0171e9517f40e41"', header)

    def test_digest_state_counts_nonce_uses(self) -> None:
        auth = DigestAuth("installer", "pw", cnonce=lambda: "c")
        self.assertIsNone(auth.header("GET", "http://e/ivp/meters"))
        auth.challenge({"realm": "enphaseenergy.com", "nonce": "n", "qop": "auth"})
        self.assertIn("nc=00000001", auth.header("GET", "http://e/ivp/meters"))
        second = auth.header("GET", "http://e/production.json?details=1")
        self.assertIn("nc=00000002", second)
        self.assertIn('uri="/production.json?details=1"', second)

    def test_redactor(self) -> None:
        redact = Redactor()
        redact.add("hunter22")
        redact.add("ab")  # too short to be a secret worth replacing
        self.assertEqual(redact("pw hunter22 ab"), "pw *** ab")


class StubCloud:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.calls = 0

    def fetch_token(self, username: str, password: str, serial: str) -> Any:
        self.calls += 1
        if not self.tokens:
            return fail(AuthError("cloud unreachable"))
        return succeed(self.tokens.pop(0))


class DictStore:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value


class TokenManagerTests(TestCase):
    """The token lifecycle on a Clock: cache, renewal ahead of expiry, re-authentication."""

    def manager(self, clock: Clock, cloud: StubCloud | None, store: DictStore, token: str | None = None):
        return TokenManager(static_token=token, username="owner@example.com" if cloud else None,
                            password="pw-123456" if cloud else None, cloud=cloud, store=store,
                            clock=clock, redact=Redactor())

    async def test_cached_token_is_used_and_renewed_in_the_background(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        store = DictStore()
        cached = make_jwt("SN", iat=clock.seconds() - 300 * DAY, lifetime=365 * DAY)  # 65 days left
        store.put("envoy:SN:token", cached)
        renewed = make_jwt("SN", iat=clock.seconds())
        cloud = StubCloud([renewed])
        accepted = {cached, renewed}
        checked: list[str] = []

        async def check(token: str) -> bool:
            checked.append(token)
            return token in accepted

        tokens = self.manager(clock, cloud, store)
        await tokens.acquire("SN", check)
        self.assertEqual((tokens.token, tokens.origin, cloud.calls), (cached, "store", 0))
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 0)  # 65 days left: nothing to do
        clock.advance(36 * DAY)  # 29 days left: renew
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 1)
        self.assertEqual(tokens.token, cached)  # not before the Envoy accepted it
        self.assertTrue(await tokens.adopt_fresh(check))
        self.assertEqual((tokens.token, store.get("envoy:SN:token")), (renewed, renewed))
        self.assertFalse(await tokens.adopt_fresh(check))

    async def test_failed_renewal_keeps_the_valid_token_and_waits(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        old = make_jwt("SN", iat=clock.seconds() - 340 * DAY, lifetime=365 * DAY)  # 25 days left
        cloud = StubCloud([])
        tokens = self.manager(clock, cloud, DictStore(), token=old)

        async def check(token: str) -> bool:
            return token == old

        await tokens.acquire("SN", check)  # renewal fails at connect: the old one still works
        self.assertEqual((tokens.token, tokens.origin, cloud.calls), (old, "config", 1))
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 2)
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 2)  # waits before trying again
        clock.advance(3601)
        tokens.maybe_refresh()
        self.assertEqual(cloud.calls, 3)
        self.flushLoggedErrors()

    async def test_expired_cached_token_is_replaced(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        store = DictStore()
        store.put("envoy:SN:token", make_jwt("SN", iat=clock.seconds() - 366 * DAY, lifetime=365 * DAY))
        fresh = make_jwt("SN", iat=clock.seconds())
        cloud = StubCloud([fresh])

        async def check(token: str) -> bool:
            return token == fresh

        tokens = self.manager(clock, cloud, store)
        await tokens.acquire("SN", check)
        self.assertEqual((tokens.token, tokens.origin, cloud.calls), (fresh, "cloud", 1))

    async def test_static_token_without_credentials(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        expired = make_jwt("SN", iat=clock.seconds() - 2 * DAY, lifetime=DAY)
        tokens = self.manager(clock, None, DictStore(), token=expired)

        async def check(token: str) -> bool:
            return True

        with self.assertRaises(AuthError) as caught:
            await tokens.acquire("SN", check)
        self.assertIn("expired", str(caught.exception))
        self.assertNotIn(expired, str(caught.exception))
        other = make_jwt("OTHER", iat=clock.seconds())
        with self.assertRaises(AuthError) as caught:
            await self.manager(clock, None, DictStore(), token=other).acquire("SN", check)
        self.assertIn("another Envoy", str(caught.exception))

    async def test_reauthenticate_once(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        first = make_jwt("SN", iat=clock.seconds())
        second = make_jwt("SN", iat=clock.seconds())
        cloud = StubCloud([first, second])
        accepted = {first}

        async def check(token: str) -> bool:
            return token in accepted

        tokens = self.manager(clock, cloud, DictStore())
        await tokens.acquire("SN", check)
        self.assertEqual(tokens.token, first)
        await tokens.reauthenticate(check)  # the Envoy still accepts it: no cloud call
        self.assertEqual(cloud.calls, 1)
        accepted = {second}
        await tokens.reauthenticate(check)
        self.assertEqual((tokens.token, cloud.calls), (second, 2))


# =====================================================================================
# options
# =====================================================================================


def envoy_config(**source: Any) -> Any:
    data = {"meters": {"grid": {"source": {"type": "envoy", **source}}}}
    return parse_config(data, "(test)", env={"ENVOY_TOKEN": "tok.en.value", "ENL_PW": "pw-value-1"})


class OptionsTests(SynchronousTestCase):
    def test_defaults_and_shorthand(self) -> None:
        options = envoy_config(host="192.168.1.100", token="${ENVOY_TOKEN}", verify_ssl=False).meters["grid"].source.options
        self.assertIs(Options, EnvoyOptions)
        self.assertEqual(options.base_url(), "https://192.168.1.100")
        self.assertEqual((options.interval, options.totals_interval, options.inverters_interval,
                          options.timeout, options.fast_path, options.inverters, options.backoff_max),
                         (2.0, 60.0, 300.0, 15.0, "readings", False, 60.0))
        self.assertEqual(options.enlighten_url, "https://enlighten.enphaseenergy.com")
        self.assertEqual(options.entrez_url, "https://entrez.enphaseenergy.com")
        self.assertEqual(envoy_config(url="https://envoy.local:8443/").meters["grid"].source.options.base_url(),
                         "https://envoy.local:8443")

    def test_secrets_are_not_in_the_repr(self) -> None:
        config = envoy_config(url="https://e", token="${ENVOY_TOKEN}", username="me@example.com",
                              password="${ENL_PW}", digest_password="dig-secret-9")
        text = repr(config)
        for secret in ("tok.en.value", "pw-value-1", "dig-secret-9"):
            self.assertNotIn(secret, text)

    def test_errors_name_the_key(self) -> None:
        cases = [
            ({}, "meters.grid.source.url"),
            ({"url": "https://a", "host": "b"}, "meters.grid.source.url"),
            ({"url": "ftp://a"}, "meters.grid.source.url"),
            ({"url": "https://a/some/path"}, "meters.grid.source.url"),
            ({"host": "a", "interval": "0s"}, "meters.grid.source.interval"),
            ({"host": "a", "username": "me"}, "meters.grid.source.password"),
            ({"host": "a", "password": "x"}, "meters.grid.source.username"),
            ({"host": "a", "tls_fingerprint": "abc"}, "meters.grid.source.tls_fingerprint"),
            ({"host": "a", "tls_fingerprint": "ab" * 32, "verify_ssl": False}, "meters.grid.source.verify_ssl"),
            ({"host": "a", "enlighten_url": "http://cloud"}, "meters.grid.source.enlighten_url"),
            ({"host": "a", "cloud_ca_file": "/nonexistent/ca.pem"}, "meters.grid.source.cloud_ca_file"),
            ({"host": "a", "fast_path": "stream"}, "meters.grid.source.fast_path"),
            ({"host": "a", "totals_interval": "1s"}, "meters.grid.source.totals_interval"),
        ]
        for source, key in cases:
            with self.assertRaises(ConfigError, msg=str(source)) as caught:
                envoy_config(**source)
            self.assertEqual(caught.exception.key, key, str(source))

    def test_fingerprint_forms(self) -> None:
        raw = bytes(range(32))
        colons = ":".join(f"{b:02X}" for b in raw)
        self.assertEqual(normalise_fingerprint(colons), raw)
        self.assertEqual(normalise_fingerprint(raw.hex()), raw)
        self.assertEqual(normalise_fingerprint("sha256/" + raw.hex()), raw)
        self.assertRaises(ValueError, normalise_fingerprint, "zz" * 32)

    def test_inverter_tags(self) -> None:
        options = envoy_config(host="e", inverters=True,
                               inverter_tags={"482101234567": {"array": "south", "row": 2}}).meters["grid"].source.options
        self.assertEqual(options.inverter_tags, {"482101234567": {"array": "south", "row": "2"}})


# =====================================================================================
# scheduling on a Clock, with an in-memory Envoy
# =====================================================================================


class MemoryEnvoy:
    """Answers from a fixture folder without sockets; timestamps follow the clock."""

    def __init__(self, folder: str, clock: Clock) -> None:
        self.folder = folder
        self.clock = clock
        self.up = True
        self.calls: list[tuple[float, str]] = []
        self.pending: list[Deferred[Any]] = []

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, data: Any = None,
                json_body: Any = None, limit: int = 0, **kw: Any) -> Deferred[Any]:
        from meteremu.sources.envoy.auth import HttpResult

        parts = urlsplit(url)
        self.calls.append((self.clock.seconds(), parts.path))
        if not self.up:
            return fail(ConnectionRefusedError("down"))
        if parts.path == "/auth/check_jwt":
            return succeed(HttpResult(200, {}, b"<h2>Valid token.</h2>"))
        name = parts.path.lstrip("/").replace("/", "_")
        if not has(self.folder, name):
            return succeed(HttpResult(404, {}, b'{"error": "404 - Not Found"}'))
        with open(fixture_path(self.folder, name), "rb") as handle:
            body = handle.read()
        if name == "ivp_meters_readings":
            data = json.loads(body)
            for meter in data:
                meter["timestamp"] = self.clock.seconds()
            body = json.dumps(data).encode()
        return succeed(HttpResult(200, {}, body))

    def close(self) -> Deferred[None]:
        return succeed(None)

    def paths(self) -> list[str]:
        return [p for _, p in self.calls]


class ScheduleTests(SynchronousTestCase):
    FOLDER = "8.2.4286_with_3cts_and_battery_split"

    def make(self, start: float = 1_000_000.3, **kw: Any) -> tuple[EnvoySource, Meter, MemoryEnvoy, Clock]:
        clock = Clock()
        clock.advance(start)
        envoy = MemoryEnvoy(self.FOLDER, clock)
        token = make_jwt(EXPECT[self.FOLDER]["info"]["sn"], iat=start)
        options = EnvoyOptions(host="envoy.local", token=token, verify_ssl=False, **kw)
        meter = Meter("grid", clock, stale_after=6.0, source_type="envoy")
        source = EnvoySource(meter, options, clock, DictStore(), envoy_http=envoy, rng=random.Random(7))
        source.startService()
        self.addCleanup(source.stopService)
        return source, meter, envoy, clock

    def test_polls_are_aligned_to_the_interval(self) -> None:
        source, meter, envoy, clock = self.make(interval=2.0)
        clock.advance(0)  # the first cycle runs at once: connect plus the first sample
        self.assertEqual(envoy.paths(), ["/info", "/auth/check_jwt", "/ivp/meters", "/ivp/meters/readings"])
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        self.assertAlmostEqual(clock.seconds() + source.next_delay, 1_000_002.0)
        starts = []
        for _ in range(5):
            clock.advance(source.next_delay)
            starts.append(clock.seconds())
        self.assertEqual([round(s, 6) for s in starts],
                         [1_000_002.0, 1_000_004.0, 1_000_006.0, 1_000_008.0, 1_000_010.0])
        self.assertEqual(aligned_delay(10.0, 2.0), 2.0)
        self.assertAlmostEqual(aligned_delay(10.5, 2.0), 1.5)

    def test_one_slow_task_per_cycle_after_the_fast_request(self) -> None:
        source, meter, envoy, clock = self.make(start=1_000_000.0, interval=2.0, inverters=True)
        clock.advance(0)
        per_cycle = []
        for _ in range(3):
            before = len(envoy.calls)
            clock.advance(source.next_delay)
            per_cycle.append([p for _, p in envoy.calls[before:]])
        self.assertEqual(per_cycle[0], ["/ivp/meters/readings", "/production.json"])
        self.assertEqual(per_cycle[1], ["/ivp/meters/readings", "/api/v1/production/inverters"])
        self.assertEqual(per_cycle[2], ["/ivp/meters/readings"])
        self.assertEqual(meter.latest.extras["pv_power"], 7123.097)
        # the totals come back at the next multiple of 60 s, inverters at 300 s
        totals = [t for t, p in envoy.calls if p == "/production.json"]
        for _ in range(200):
            clock.advance(source.next_delay)
        totals = [t for t, p in envoy.calls if p == "/production.json"]
        self.assertEqual([t % 60 for t in totals[1:]], [0.0] * (len(totals) - 1))
        inverters = [t for t, p in envoy.calls if p == "/api/v1/production/inverters"]
        self.assertEqual(len(inverters), 2)
        self.assertEqual(inverters[1] % 300, 2.0)  # deferred one cycle: totals were due too
        self.assertEqual(source.max_in_flight, 1)

    def test_backoff_with_jitter_then_recovery(self) -> None:
        source, meter, envoy, clock = self.make(interval=2.0, backoff_max=60.0)
        clock.advance(0)
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        last_power = meter.latest.powers()
        envoy.up = False
        clock.advance(source.next_delay)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertEqual(meter.stats.last_error, "the Envoy did not answer: connection refused")
        delays = [source.next_delay]
        for _ in range(8):
            clock.advance(source.next_delay)
            delays.append(source.next_delay)
            self.assertEqual(meter.freshness(), Freshness.DOWN)
        ceilings = [min(60.0, 2.0 * 2 ** n) for n in range(9)]
        for delay, ceiling in zip(delays, ceilings, strict=True):
            self.assertGreaterEqual(delay, ceiling / 2)
            self.assertLessEqual(delay, ceiling)
        self.assertEqual(len(set(delays[-3:])), 3)  # jittered, not a fixed cadence
        self.assertEqual(meter.latest.powers(), last_power)  # never replaced by zeros
        self.assertEqual(meter.stats.failures, 9)
        # recovery without a restart: /info again (firmware may have changed), then aligned polls
        envoy.up = True
        before = len(envoy.calls)
        clock.advance(source.next_delay)
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        self.assertEqual(envoy.paths()[before], "/info")
        self.assertAlmostEqual((clock.seconds() + source.next_delay) % 2.0, 0.0, places=6)
        self.assertEqual(source.failures, 0)
        source.failures = 5000  # a week-long outage: no overflow, still capped and jittered
        self.assertLessEqual(source._backoff(), 60.0)
        self.assertGreaterEqual(source._backoff(), 30.0)
        source.failures = 0

    def test_info_falls_back_to_http_without_a_port(self) -> None:
        for folder, data_scheme in (("5.0.62", "http"), ("8.3.5167_3rd-pv", "https")):
            self.FOLDER = folder
            source, meter, envoy, clock = self.make(interval=2.0)
            original = envoy.request
            schemes: list[str] = []

            def request(method: str, url: str, original: Any = original, schemes: list[str] = schemes,
                        **kw: Any) -> Any:
                schemes.append(urlsplit(url).scheme)
                if url.startswith("https://") and url.endswith("/info"):
                    return fail(ConnectionRefusedError("no https on this firmware"))
                return original(method, url, **kw)

            envoy.request = request  # type: ignore[method-assign]
            clock.advance(0)
            self.assertEqual(schemes[:2], ["https", "http"], folder)  # /info: https, then http
            self.assertEqual(source.data_base, f"{data_scheme}://envoy.local", folder)
            self.assertEqual(set(schemes[2:]), {data_scheme}, folder)

    def test_no_grid_data_is_down_and_reprobed_late(self) -> None:
        self.FOLDER = "8.2.4264_metered_noct"
        source, meter, envoy, clock = self.make(interval=2.0)
        clock.advance(0)
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertIsNone(meter.latest)
        self.assertIn("no grid data", meter.stats.last_error)
        self.assertEqual(source.next_delay, 300.0)

    def test_missing_sample_is_skipped_not_down(self) -> None:
        source, meter, envoy, clock = self.make(interval=2.0, fast_path="production")
        original = envoy.request

        def request(method: str, url: str, **kw: Any) -> Any:
            d = original(method, url, **kw)
            if "production.json" in url:
                def zero(result: Any) -> Any:
                    from meteremu.sources.envoy.auth import HttpResult

                    data = json.loads(result.body)
                    if self.zero:
                        for entry in data["consumption"]:
                            entry["activeCount"] = 0
                    for entry in data["consumption"]:
                        entry["readingTime"] = clock.seconds()
                    return HttpResult(200, {}, json.dumps(data).encode())
                d.addCallback(zero)
            return d

        self.zero = False
        envoy.request = request  # type: ignore[method-assign]
        clock.advance(0)
        self.assertEqual(source.path, "production")
        self.assertAlmostEqual(meter.latest.powers()[0], 848.37)
        self.zero = True
        clock.advance(source.next_delay)
        self.assertEqual(meter.stats.last_error, "sample skipped: net-consumption activeCount is 0")
        self.assertNotEqual(meter.freshness(), Freshness.DOWN)
        self.assertEqual(source.failures, 0)
        self.assertAlmostEqual((clock.seconds() + source.next_delay) % 2.0, 0.0, places=6)


# =====================================================================================
# real sockets: fake Envoy over HTTPS / HTTP, fake cloud
# =====================================================================================


class WatchedMeter(Meter):
    """A Meter whose updates and failures wake waiting tests."""

    def __init__(self) -> None:
        super().__init__("grid", reactor, stale_after=30.0, source_type="envoy")
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self.readings: list[Any] = []

    def update(self, reading: Any) -> bool:
        new = super().update(reading)
        if new:
            self.readings.append(reading)
        self._wake()
        return new

    def report_failure(self, error: str, down: bool = True) -> None:
        super().report_failure(error, down)
        self._wake()

    def _wake(self) -> None:
        for entry in list(self._waiters):
            check, d = entry
            if check() and not d.called:
                self._waiters.remove(entry)
                d.callback(None)

    def wait(self, check: Callable[[], bool], timeout: float = 10.0) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if check():
            d.callback(None)
            return d
        self._waiters.append((check, d))
        return d.addTimeout(timeout, reactor)

    def wait_reading(self, count: int = 1) -> Deferred[None]:
        start = self.stats.fetches
        return self.wait(lambda: self.latest is not None and self.stats.fetches >= start + count)

    def wait_error(self, text: str) -> Deferred[None]:
        return self.wait(lambda: self.stats.last_error is not None and text in self.stats.last_error)


class LogCapture:
    def __init__(self, case: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        lines = []
        for event in self.events:
            lines.append(formatEvent(event) or "")
            lines.append(repr({k: v for k, v in event.items() if k != "log_logger"}))
        return "\n".join(lines)


class IOCase(TestCase):
    timeout = 30

    def envoy(self, folder: str, **kw: Any) -> FakeEnvoy:
        fake = FakeEnvoy(folder, **kw)
        fake.start()
        self.addCleanup(fake.stop)
        return fake

    def cloud(self, envoy: FakeEnvoy | None = None, **kw: Any) -> FakeCloud:
        fake = FakeCloud(envoy.state if envoy else None, **kw)
        fake.start()
        self.addCleanup(fake.stop)
        return fake

    def token_for(self, envoy: FakeEnvoy, **kw: Any) -> str:
        token = make_jwt(envoy.info.serial, **kw)
        envoy.state.valid_tokens.add(token)
        return token

    def source(self, envoy: FakeEnvoy, store: Any = None, meter: WatchedMeter | None = None,
               **kw: Any) -> tuple[EnvoySource, WatchedMeter]:
        opts: dict[str, Any] = {"url": envoy.url, "interval": 0.2, "timeout": 5.0, "totals_interval": 60.0}
        if envoy.tls and "verify_ssl" not in kw and "tls_fingerprint" not in kw:
            opts["tls_fingerprint"] = envoy.fingerprint
        opts.update(kw)
        options = EnvoyOptions(**opts)
        self.assertEqual(options.validate(), [])
        meter = meter or WatchedMeter()
        source = EnvoySource(meter, options, reactor, store if store is not None else DictStore())
        source.startService()
        self.addCleanup(source.stopService)
        return source, meter


class ReplayTests(IOCase):
    """Every fixture folder through the real client: HTTPS + token, or HTTP + Digest."""

    async def replay(self, folder: str) -> None:
        envoy = self.envoy(folder)
        kw: dict[str, Any] = {}
        if envoy.token_mode:
            kw["token"] = self.token_for(envoy)
        source, meter = self.source(envoy, **kw)
        expected = expected_grid(folder)
        if expected is None:
            await meter.wait_error("no grid data")
            self.assertEqual(meter.freshness(), Freshness.DOWN, folder)
            self.assertIsNone(meter.latest, folder)
            return
        await meter.wait_reading(2)
        powers, energy = expected
        reading = meter.latest
        self.assertEqual(len(reading.phases), len(powers), folder)
        for got, want in zip(reading.powers(), powers, strict=True):
            self.assertLessEqual(abs(got - want), TOL, f"{folder}: {reading.powers()} != {powers}")
        self.assertEqual(meter.freshness(), Freshness.FRESH)
        if energy is not None:  # the Meter follows the Envoy's per-phase lifetime counters
            self.assertEqual([(c.import_wh, c.export_wh) for c in meter.energy.phases[: len(powers)]],
                             channel_energy(folder), folder)
            self.assertEqual(reading.energy, tuple(channel_energy(folder)))
            if folder in CONSISTENT_READINGS:
                self.assertLessEqual(abs(meter.energy.total_import_wh - energy[0]), 0.1, folder)
                self.assertLessEqual(abs(meter.energy.total_export_wh - energy[1]), 0.1, folder)
        self.assertEqual(envoy.max_concurrent, 1, folder)
        if envoy.token_mode:
            self.assertTrue(envoy.tls)
            auth = [s.headers.get("authorization", "") for s in envoy.seen if s.path == "/ivp/meters/readings"]
            self.assertTrue(all(a.startswith("Bearer ") for a in auth), folder)
        else:
            self.assertFalse(envoy.tls)
            digest = [s.headers.get("authorization", "") for s in envoy.seen
                      if s.path == "/ivp/meters/readings"]
            self.assertTrue(digest and all(a.startswith('Digest username="installer"') for a in digest))

    def test_production_json_fallback_without_readings(self) -> None:
        envoy = self.envoy("8.3.5169_with_generator")
        envoy.overrides["/ivp/meters/readings"] = (404, {}, b'{"error": "404 - Not Found"}')
        source, meter = self.source(envoy, token=self.token_for(envoy))

        def check(_: Any) -> None:
            self.assertEqual(source.path, "production")
            self.assertEqual(len(meter.latest.phases), 2)
            for got, want in zip(meter.latest.powers(), [-295.092, 460.393], strict=True):
                self.assertAlmostEqual(got, want, places=3)
            self.assertIsNone(meter.latest.energy)
            self.assertIn("/production.json?details=1", envoy.paths())

        return meter.wait_reading(2).addCallback(check)


def _add_replay_tests() -> None:
    for folder in folders():
        name = "test_" + folder.replace(".", "_").replace("-", "_")

        def test(self: ReplayTests, folder: str = folder) -> Any:
            return self.replay(folder)

        test.__name__ = name
        setattr(ReplayTests, name, test)


_add_replay_tests()


class AuthFlowTests(IOCase):
    FOLDER = "8.2.4286_with_3cts_and_battery_split"

    async def test_static_token(self) -> None:
        envoy = self.envoy(self.FOLDER)
        token = self.token_for(envoy)
        source, meter = self.source(envoy, token=token)
        await meter.wait_reading(2)
        self.assertEqual(envoy.paths()[:3], ["/info", "/auth/check_jwt", "/ivp/meters"])
        self.assertEqual(envoy.paths().count("/auth/check_jwt"), 1)
        self.assertEqual(envoy.seen[1].headers["authorization"], f"Bearer {token}")
        self.assertEqual(source.tokens.origin, "config")

    async def test_enlighten_login_entrez_token_check_jwt_and_cache(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        store = DictStore()
        ca = cloud.write_ca(self.mktemp())
        creds = {"username": cloud.username, "password": cloud.password, "enlighten_url": cloud.url,
                 "entrez_url": cloud.url, "cloud_ca_file": ca}
        source, meter = self.source(envoy, store=store, **creds)
        await meter.wait_reading(2)
        self.assertEqual((cloud.logins, len(cloud.issued)), (1, 1))
        token = cloud.issued[0]
        self.assertEqual(store.get(f"envoy:{envoy.info.serial}:token"), token)
        login = cloud.seen[0]
        self.assertTrue(login.path.startswith("/login/login.json"))
        self.assertIn(b"user%5Bemail%5D=owner%40example.com", login.body)
        entrez = json.loads(cloud.seen[1].body)
        self.assertEqual(entrez["serial_num"], envoy.info.serial)
        self.assertEqual(entrez["username"], cloud.username)
        self.assertIn("/auth/check_jwt", envoy.paths())
        await source.stopService()
        # a second start uses the cached token: no cloud call
        source2, meter2 = self.source(envoy, store=store, **creds)
        await meter2.wait_reading(2)
        self.assertEqual(cloud.logins, 1)
        self.assertEqual(source2.tokens.origin, "store")

    async def test_401_triggers_one_reauthentication(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        source, meter = self.source(envoy, username=cloud.username, password=cloud.password,
                                    enlighten_url=cloud.url, entrez_url=cloud.url,
                                    cloud_ca_file=cloud.write_ca(self.mktemp()))
        await meter.wait_reading(2)
        old = cloud.issued[0]
        envoy.state.valid_tokens.clear()  # the Envoy forgets the token (reboot, revocation)
        envoy.state.sessions.clear()
        before = meter.stats.fetches
        await meter.wait(lambda: len(cloud.issued) == 2 and meter.stats.fetches >= before + 2)
        self.assertNotEqual(source.tokens.token, old)
        self.assertEqual(cloud.logins, 2)
        self.assertEqual(meter.stats.failures, 0)  # re-authenticated within the cycle
        rejected = [s for s in envoy.seen if s.headers.get("authorization") == f"Bearer {old}"]
        self.assertTrue(rejected)

    async def test_401_without_credentials_is_down_with_a_clear_error(self) -> None:
        envoy = self.envoy(self.FOLDER)
        token = self.token_for(envoy)
        source, meter = self.source(envoy, token=token)
        await meter.wait_reading(1)
        envoy.state.valid_tokens.clear()
        envoy.state.sessions.clear()
        await meter.wait_error("rejected the token")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertNotIn(token, meter.stats.last_error)

    async def test_second_refusal_after_reauthentication_is_an_error(self) -> None:
        envoy = self.envoy(self.FOLDER)
        token = self.token_for(envoy)
        source, meter = self.source(envoy, token=token)
        await meter.wait_reading(1)
        envoy.overrides["/ivp/meters/readings"] = (403, {}, b"forbidden")
        await meter.wait_error("even after re-authentication (HTTP 403)")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        checks = envoy.paths().count("/auth/check_jwt")
        self.assertEqual(checks, 2)  # once at connect, once to re-authenticate: no loop
        del envoy.overrides["/ivp/meters/readings"]
        await meter.wait(lambda: meter.freshness() == Freshness.FRESH)

    async def test_expired_cached_token_is_refreshed_from_the_cloud(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        store = DictStore()
        now = reactor.seconds()
        expired = make_jwt(envoy.info.serial, iat=now - 366 * DAY, lifetime=365 * DAY)
        nearly = make_jwt(envoy.info.serial, iat=now - 340 * DAY, lifetime=365 * DAY)  # 25 days left
        envoy.state.valid_tokens.update({expired, nearly})
        store.put(f"envoy:{envoy.info.serial}:token", expired)
        creds = {"username": cloud.username, "password": cloud.password, "enlighten_url": cloud.url,
                 "entrez_url": cloud.url, "cloud_ca_file": cloud.write_ca(self.mktemp())}
        source, meter = self.source(envoy, store=store, **creds)
        await meter.wait_reading(1)
        self.assertEqual(len(cloud.issued), 1)
        self.assertEqual(source.tokens.token, cloud.issued[0])
        self.assertEqual(store.get(f"envoy:{envoy.info.serial}:token"), cloud.issued[0])
        await source.stopService()
        # an owner token with fewer than 30 days left is renewed ahead of expiry
        store.put(f"envoy:{envoy.info.serial}:token", nearly)
        source2, meter2 = self.source(envoy, store=store, **creds)
        await meter2.wait_reading(1)
        self.assertEqual(len(cloud.issued), 2)
        self.assertEqual(source2.tokens.token, cloud.issued[1])

    async def test_installer_token_lifetime(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy, user_type="installer", lifetime=12 * 3600)
        source, meter = self.source(envoy, username=cloud.username, password=cloud.password,
                                    enlighten_url=cloud.url, entrez_url=cloud.url,
                                    cloud_ca_file=cloud.write_ca(self.mktemp()))
        await meter.wait_reading(1)
        claims = source.tokens.claims
        self.assertEqual((claims.user_type, claims.lifetime, claims.refresh_margin), ("installer", 43200, 3600))

    async def test_mfa_account_is_a_clear_error(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        cloud.mfa = True
        source, meter = self.source(envoy, username=cloud.username, password=cloud.password,
                                    enlighten_url=cloud.url, entrez_url=cloud.url,
                                    cloud_ca_file=cloud.write_ca(self.mktemp()))
        await meter.wait_error("multi-factor")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        self.assertEqual(source.next_delay, 300.0)  # no hammering of the cloud
        self.assertEqual(cloud.issued, [])

    async def test_wrong_password(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        source, meter = self.source(envoy, username=cloud.username, password="wrong-password-123",
                                    enlighten_url=cloud.url, entrez_url=cloud.url,
                                    cloud_ca_file=cloud.write_ca(self.mktemp()))
        await meter.wait_error("check username and password")
        self.assertNotIn("wrong-password-123", meter.stats.last_error)

    async def test_cloud_tls_is_verified(self) -> None:
        envoy = self.envoy(self.FOLDER)
        cloud = self.cloud(envoy)
        source, meter = self.source(envoy, username=cloud.username, password=cloud.password,
                                    enlighten_url=cloud.url, entrez_url=cloud.url)  # no CA given
        await meter.wait_error("Enlighten login failed")
        self.assertIn("TLS", meter.stats.last_error)
        self.assertEqual(cloud.logins, 0)  # the credentials never reached an unverified peer
        self.flushLoggedErrors()

    async def test_digest_on_old_firmware(self) -> None:
        envoy = self.envoy("4.10.35")
        source, meter = self.source(envoy)
        await meter.wait_reading(2)
        self.assertEqual(source.digest.username, "installer")
        readings = [s for s in envoy.seen if s.path == "/ivp/meters/readings"]
        self.assertTrue(all('Digest username="installer"' in s.headers.get("authorization", "")
                            for s in readings))
        self.assertNotIn("authorization", envoy.seen[0].headers)  # /info needs none
        self.assertEqual(envoy.paths().count("/ivp/meters"), 2)  # challenge once, then reused

    async def test_wrong_digest_password(self) -> None:
        envoy = self.envoy("4.10.35")
        source, meter = self.source(envoy, digest_password="not-the-password")
        await meter.wait_error("Digest authentication as 'installer' was refused")
        self.assertNotIn("not-the-password", meter.stats.last_error)


class TLSAndResilienceTests(IOCase):
    FOLDER = "8.3.5167_3rd-pv"

    async def test_wrong_fingerprint_is_refused(self) -> None:
        envoy = self.envoy(self.FOLDER)
        source, meter = self.source(envoy, token=self.token_for(envoy), tls_fingerprint="00" * 32)
        await meter.wait_error("does not match tls_fingerprint")
        self.assertIn(envoy.fingerprint, meter.stats.last_error)  # tells the user what to pin
        self.assertEqual(envoy.seen, [])
        self.flushLoggedErrors()

    async def test_unverified_self_signed_is_refused_by_default(self) -> None:
        envoy = self.envoy(self.FOLDER)
        source, meter = self.source(envoy, token=self.token_for(envoy), verify_ssl=True,
                                    tls_fingerprint=None)
        await meter.wait_error("TLS certificate not trusted")
        self.assertEqual(envoy.seen, [])
        self.flushLoggedErrors()

    async def test_verify_ssl_false_accepts_it(self) -> None:
        envoy = self.envoy(self.FOLDER)
        source, meter = self.source(envoy, token=self.token_for(envoy), verify_ssl=False)
        await meter.wait_reading(1)
        self.assertEqual(len(meter.latest.phases), 3)

    async def test_timeout_is_down_then_recovers_with_info_again(self) -> None:
        envoy = self.envoy(self.FOLDER)
        source, meter = self.source(envoy, token=self.token_for(envoy), timeout=1.0, backoff_max=0.5)
        await meter.wait_reading(2)
        envoy.hang.add("/ivp/meters/readings")
        await meter.wait_error("the Envoy did not answer: timed out")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        last = meter.latest.powers()
        envoy.hang.clear()
        seen_before = len(envoy.seen)
        await meter.wait(lambda: meter.freshness() == Freshness.FRESH)
        self.assertEqual(envoy.seen[seen_before].path, "/info")
        self.assertTrue(envoy.hung)
        for request in envoy.hung:
            self.assertTrue(request._disconnected)  # the client closed each stalled socket
        envoy.hung.clear()
        self.assertEqual(len(meter.latest.phases), len(last))
        self.assertEqual(envoy.max_concurrent, 1)

    async def test_refused_connection_then_recovery(self) -> None:
        envoy = self.envoy(self.FOLDER)
        token = self.token_for(envoy)
        source, meter = self.source(envoy, token=token, backoff_max=0.4)
        await meter.wait_reading(1)
        port = envoy.listener.number
        await envoy.stop()
        await meter.wait_error("did not answer")
        self.assertEqual(meter.freshness(), Freshness.DOWN)
        envoy.start(port)
        await meter.wait(lambda: meter.freshness() == Freshness.FRESH)

    async def test_slow_path_extras_and_inverters(self) -> None:
        envoy = self.envoy("8.2.4382_ACB")
        serial = "122050070266"
        tags = {serial: {"array": "south", "row": "1"}}
        source, meter = self.source(envoy, token=self.token_for(envoy), inverters=True,
                                    totals_interval=0.2, inverters_interval=0.2, inverter_tags=tags)
        self.assertEqual(meter.extra_labels[f"inverter.{serial}"], {"array": "south", "row": "1"})
        await meter.wait(lambda: meter.latest is not None and "pv_power" in meter.latest.extras)
        self.assertAlmostEqual(meter.latest.extras["pv_power"], 311.12)
        self.assertEqual(meter.latest.extras["acb_soc"], 25)
        await meter.wait(lambda: envoy.paths().count("/api/v1/production/inverters") >= 3)

        def inverter_keys() -> list[str]:
            return [k for r in meter.readings for k in r.extras if k.startswith("inverter.")]

        self.assertEqual(inverter_keys(), [])  # the first poll only learns the report dates
        envoy.bump_inverters(serials={serial}, watts=42)
        await meter.wait(lambda: bool(inverter_keys()))
        carrying = [r for r in meter.readings if f"inverter.{serial}" in r.extras]
        self.assertEqual(len(carrying), 1)  # reported once: its lastReportDate moved once
        self.assertEqual(carrying[0].extras[f"inverter.{serial}"], 42)
        self.assertEqual(inverter_keys(), [f"inverter.{serial}"])
        await meter.wait_reading(2)
        self.assertEqual(inverter_keys(), [f"inverter.{serial}"])
        self.assertIn("pv_power", meter.latest.extras)  # totals stay in every reading
        self.assertEqual(envoy.max_concurrent, 1)

    async def test_livedata_path_enables_the_stream(self) -> None:
        envoy = self.envoy(self.FOLDER)
        envoy.livedata = livedata_three_phase(stream="disabled")

        def tick(seen: Any) -> None:
            if seen.path == "/ivp/livedata/status":
                envoy.livedata["meters"]["last_update"] += 1

        envoy.on_request = tick
        source, meter = self.source(envoy, token=self.token_for(envoy), fast_path="livedata")
        await meter.wait_reading(1)
        posts = [s for s in envoy.seen if s.path == "/ivp/livedata/stream"]
        self.assertEqual(len(posts), 1)
        self.assertEqual(json.loads(posts[0].body), {"enable": 1})
        self.assertEqual(source.path, "livedata")
        for got, want in zip(meter.latest.powers(), [1200.0, -300.5, 7.0], strict=True):
            self.assertAlmostEqual(got, want)


# =====================================================================================
# end to end: fake Envoy → meteremu → Shelly UDP; secrets never shown
# =====================================================================================


class EndToEndTests(IOCase):
    async def test_udp_em_getstatus_returns_the_envoys_phases(self) -> None:
        envoy = self.envoy("8.3.5167_3rd-pv")
        token = self.token_for(envoy)
        ports = free_udp_ports(1)
        config = test_config(self.mktemp(), meters={"grid": {"source": {
            "type": "envoy", "url": envoy.url, "token": token, "tls_fingerprint": envoy.fingerprint,
            "interval": "200ms"}}}, devices=[{"type": "shelly_pro_3em", "udp_ports": ports}])
        app = await start_app(self, config)
        meter = app.meters["grid"]
        first: Deferred[None] = Deferred()

        def listener(m: Meter, reading: Any) -> None:
            if not first.called:
                first.callback(None)

        meter.add_listener(listener)
        if meter.latest is None:
            await first.addTimeout(10, reactor)
        battery = Battery()
        port = reactor.listenUDP(0, battery, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        raw = await battery.ask(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', ports[0])
        result = json.loads(raw)["result"]
        # + = import: this Envoy exports on every phase
        self.assertAlmostEqual(result["a_act_power"], -2879.825, places=1)
        self.assertAlmostEqual(result["b_act_power"], -877.472, places=1)
        self.assertAlmostEqual(result["c_act_power"], -1154.943, places=1)
        self.assertAlmostEqual(result["total_act_power"], -4912.24, places=1)
        raw = await battery.ask(b'{"id":2,"method":"EMData.GetStatus","params":{"id":0}}', ports[0])
        data = json.loads(raw)["result"]
        self.assertAlmostEqual(data["total_act"], 99056.45, places=1)  # the Envoy's own counters
        self.assertAlmostEqual(data["total_act_ret"], 415089.21, places=1)

    async def test_tokens_and_passwords_never_appear(self) -> None:
        capture = LogCapture(self)
        envoy = self.envoy("8.2.4286_with_3cts_and_battery_split")
        cloud = self.cloud(envoy, password="Pa55-w0rd-NEVER-SHOWN")
        ca = cloud.write_ca(self.mktemp())
        config = test_config(self.mktemp(), meters={
            "grid": {"source": {"type": "envoy", "url": envoy.url, "tls_fingerprint": envoy.fingerprint,
                                "interval": "200ms", "username": cloud.username,
                                "password": cloud.password, "enlighten_url": cloud.url,
                                "entrez_url": cloud.url, "cloud_ca_file": ca}},
            "bad": {"source": {"type": "envoy", "url": envoy.url, "tls_fingerprint": envoy.fingerprint,
                               "interval": "200ms", "token": "eyJhbGciOi.STATIC-TOKEN-NEVER-SHOWN.sig"}}})
        app = await start_app(self, config)
        grid = app.meters["grid"]
        got: Deferred[None] = Deferred()
        grid.add_listener(lambda m, r: got.called or got.callback(None))
        if grid.latest is None:
            await got.addTimeout(10, reactor)
        # force a re-authentication, so the token travels once more
        envoy.state.valid_tokens.clear()
        again: Deferred[None] = Deferred()
        issued = len(cloud.issued)

        def after(m: Meter, r: Any) -> None:
            if len(cloud.issued) > issued and not again.called:
                again.callback(None)

        grid.add_listener(after)
        await again.addTimeout(10, reactor)
        http = HTTPClient(self)
        _, health = await http.get(f"http://127.0.0.1:{app.http_port()}/healthz")
        _, metrics = await http.get(f"http://127.0.0.1:{app.http_port()}/metrics")
        health_data = json.loads(health)
        self.assertIn("authentication", health_data["meters"]["bad"]["last_error"])
        self.assertEqual(health_data["meters"]["grid"]["state"], "fresh")
        details = health_data["meters"]["grid"]["details"]
        self.assertEqual((details["serial"], details["firmware"], details["auth"], details["fast_path"],
                          details["phases"], details["token_source"], details["token_type"]),
                         ("123456789012", "8.2.4286", "token", "readings", 2, "cloud", "owner"))
        secrets_ = [cloud.password, "STATIC-TOKEN-NEVER-SHOWN", *cloud.issued, *cloud.sessions]
        shown = "\n".join([health.decode(), metrics.decode(), capture.text()])
        self.assertIn("meteremu_source_polls", metrics.decode())
        for secret in secrets_:
            self.assertNotIn(secret, shown)
        self.assertGreater(len(capture.events), 3)


class RegistryTests(SynchronousTestCase):
    def test_make_source_builds_the_service(self) -> None:
        clock = Clock()
        meter = Meter("grid", clock)
        source = make_source(meter, EnvoyOptions(host="envoy.local", verify_ssl=False), clock, DictStore())
        self.assertIsInstance(source, EnvoySource)
        from meteremu.sources import source_module

        self.assertIs(source_module("envoy").Options, EnvoyOptions)
