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
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.meter import Freshness, Meter
from meteremu.sources.envoy import Options, make_source, parse
from meteremu.sources.envoy.auth import (
    AuthError,
    DigestAuth,
    Redactor,
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
from tests.support.fake_envoy import (
    fixture_path,
    folders,
    make_jwt,
)
from tests.support.shared.envoy import (
    CONSISTENT_READINGS,
    DAY,
    EXPECT,
    LIVEDATA_DOC,
    TOL,
    DictStore,
    channel_energy,
    expected_grid,
    has,
    livedata_three_phase,
    load,
    meters_of,
)


class Approx:
    def assertClose(self, first: float, second: float, tol: float = TOL, msg: str | None = None) -> None:
        self.assertLessEqual(abs(first - second), tol, msg or f"{first} != {second} (±{tol})")  # type: ignore[attr-defined]

    def assertAllClose(self, first: Any, second: Any, tol: float = TOL, msg: str = "") -> None:
        first, second = list(first), list(second)
        self.assertEqual(len(first), len(second), f"{msg}: {first} vs {second}")  # type: ignore[attr-defined]
        for a, b in zip(first, second, strict=True):
            self.assertClose(a, b, tol, f"{msg}: {first} != {second}")


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


class RegistryTests(SynchronousTestCase):
    def test_make_source_builds_the_service(self) -> None:
        clock = Clock()
        meter = Meter("grid", clock)
        source = make_source(meter, EnvoyOptions(host="envoy.local", verify_ssl=False), clock, DictStore())
        self.assertIsInstance(source, EnvoySource)
        from meteremu.sources import source_module

        self.assertIs(source_module("envoy").Options, EnvoyOptions)
