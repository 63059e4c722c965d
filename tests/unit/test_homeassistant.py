"""Home Assistant source (specs/sources-sinks.md §1, conformance checks 20-24).

Pure parts are table-driven and synchronous; the I/O tests run the real
client (autobahn + treq) against ``tests/support/fake_homeassistant.py`` on
loopback. Timers of the source (backoff, ping, poll) run on a ``Clock`` where
a test needs to control them; sockets always use the real reactor.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.reading import Reading
from meteremu.sources.homeassistant import protocol as ha
from tests.support.fake_homeassistant import (
    HOMEWIZARD_POWER,
    VOLTAGE,
)
from tests.support.shared import homeassistant as shared
from tests.support.shared.homeassistant import DSMR_STATES, W, rest


def tracker(**entities: Any) -> ha.Tracker:
    circuits = entities.pop("circuits", {})
    invert = entities.pop("invert", False)
    smoother = entities.pop("smoother", None)
    return ha.Tracker(ha.EntityMapping(entities=entities, circuits=circuits, invert=invert), smoother)


class UnitTests(SynchronousTestCase):
    def test_power_to_watts(self) -> None:
        for state, unit, watts in (("512.5", "W", 512.5), ("0.64", "kW", 640.0), ("1.2", "MW", 1_200_000.0),
                                   ("1500", "mW", 1.5), ("0.001", "GW", 1_000_000.0),
                                   ("-0.25", "kW", -250.0), ("100", "BTU/h", 29.307107)):
            self.assertAlmostEqual(ha.convert(state, unit, ha.POWER), watts, places=9, msg=(state, unit))

    def test_energy_to_kwh(self) -> None:
        for state, unit, kwh in (("1500", "Wh", 1.5), ("2", "MWh", 2000.0), ("0.0036", "GJ", 1.0),
                                 ("3.6", "MJ", 1.0), ("6545.766", "kWh", 6545.766), ("860420.650", "cal", 1.0)):
            value = ha.convert(state, unit, ha.ENERGY) / 1000
            self.assertAlmostEqual(value, kwh, places=6, msg=(state, unit))
        self.assertEqual(ha.convert("0.0036", "GJ", ha.ENERGY), 1000.0)  # exact, not 999.99…

    def test_other_kinds(self) -> None:
        self.assertEqual(ha.convert("230.1", "V", ha.VOLTAGE), 230.1)
        self.assertEqual(ha.convert("480", "mA", ha.CURRENT), 0.48)
        self.assertEqual(ha.convert("50.01", "Hz", ha.FREQUENCY), 50.01)
        self.assertEqual(ha.convert("95", "%", ha.POWER_FACTOR), 0.95)
        self.assertEqual(ha.convert("0.95", None, ha.POWER_FACTOR), 0.95)

    def test_rejected_samples(self) -> None:
        for state, unit in (("abc", "W"), ("unknown", "W"), ("unavailable", "W"), ("", "W"),
                            ("nan", "W"), ("inf", "kW"), ("512", None), ("512", ""), ("512", "kVA")):
            with self.assertRaises(ha.SampleError, msg=(state, unit)):
                ha.convert(state, unit, ha.POWER)

    def test_rest_samples(self) -> None:
        t = tracker(power="sensor.p")
        outcome = t.apply_rest([rest("sensor.p", "512.5")])
        self.assertEqual(outcome.reading.total_act_power, 512.5)
        self.assertEqual(outcome.reading.measured_at, 1700000000.0)
        # "abc" → no sample, one warning (once)
        bad = [rest("sensor.p", "abc", ts="2023-11-14T22:13:21+00:00")]
        outcome = t.apply_rest(bad)
        self.assertIsNone(outcome.reading)
        self.assertEqual(len(outcome.warnings), 1)
        self.assertIn("not a number", outcome.warnings[0])
        self.assertEqual(t.apply_rest([rest("sensor.p", "abc", ts="2023-11-14T22:13:22+00:00")]).warnings, [])
        # missing unit on a power sensor → rejected
        outcome = t.apply_rest([rest("sensor.p", "600", unit=None, ts="2023-11-14T22:13:23+00:00")])
        self.assertIsNone(outcome.reading)
        self.assertIn("no unit_of_measurement", outcome.warnings[0])
        # unknown → no sample, the last value stays
        outcome = t.apply_rest([rest("sensor.p", "unknown", ts="2023-11-14T22:13:24+00:00")])
        self.assertIsNone(outcome.reading)
        self.assertIsNone(outcome.down)
        self.assertTrue(t.ready)
        # unavailable → down, no sample
        outcome = t.apply_rest([rest("sensor.p", "unavailable", ts="2023-11-14T22:13:25+00:00")])
        self.assertIsNone(outcome.reading)
        self.assertEqual(outcome.down, "sensor.p is unavailable")
        self.assertFalse(t.ready)
        outcome = t.apply_rest([rest("sensor.p", "0.7", unit="kW", ts="2023-11-14T22:13:26+00:00")])
        self.assertEqual(outcome.reading.total_act_power, 700.0)

    def test_an_older_rest_state_never_overwrites_a_newer_one(self) -> None:
        t = tracker(power="sensor.p")
        t.apply_event({"a": {"sensor.p": {"s": "100", "a": {"unit_of_measurement": "W"}, "lc": 1700000010.0}}})
        outcome = t.apply_rest([rest("sensor.p", "50")])  # 1700000000: older
        self.assertIsNone(outcome.reading)
        self.assertEqual(t.values["sensor.p"], 100.0)


class CompressedStateTests(SynchronousTestCase):
    def test_check_22_sequence(self) -> None:
        t = tracker(power="sensor.p")
        out = t.apply_event({"a": {"sensor.p": {"s": "100", "a": {"unit_of_measurement": "W"}, "c": "x",
                                                "lc": 1700000000.0}}})
        self.assertEqual(out.reading.total_act_power, 100.0)
        self.assertEqual(datetime.fromtimestamp(out.reading.measured_at, UTC).isoformat(),
                         "2023-11-14T22:13:20+00:00")
        out = t.apply_event({"c": {"sensor.p": {"+": {"s": "0.25", "a": {"unit_of_measurement": "kW"},
                                                      "lc": 1700000005.0}}}})
        self.assertEqual(out.reading.total_act_power, 250.0)
        self.assertEqual(out.reading.measured_at, 1700000005.0)
        out = t.apply_event({"c": {"sensor.p": {"+": {"lu": 1700000006.0, "a": {"friendly_name": "P"}},
                                                "-": {"a": ["icon"]}}}})
        self.assertIsNone(out.reading)  # still 250 W: no new sample
        self.assertEqual(t.values["sensor.p"], 250.0)
        self.assertEqual(t.states["sensor.p"]["a"], {"unit_of_measurement": "kW", "friendly_name": "P"})
        out = t.apply_event({"r": ["sensor.p"]})
        self.assertNotIn("sensor.p", t.states)
        self.assertEqual(out.down, "sensor.p was removed from Home Assistant")

    def test_batched_event_applies_add_change_and_remove(self) -> None:
        t = tracker(a_power="sensor.a", b_power="sensor.b", c_power="sensor.c", circuits={"hvac": "sensor.h"})
        base = {"a": {"unit_of_measurement": "W"}, "lc": 1700000000.0}
        t.apply_event({"a": {"sensor.a": {"s": "1", **base}, "sensor.b": {"s": "2", **base},
                             "sensor.c": {"s": "3", **base}, "sensor.h": {"s": "9", **base}}})
        out = t.apply_event({"a": {"sensor.b": {"s": "20", **base, "lc": 1700000001.0}},
                             "c": {"sensor.a": {"+": {"s": "10", "lc": 1700000001.0}}},
                             "r": ["sensor.h"]})
        self.assertEqual(out.reading.powers(), (10.0, 20.0, 3.0))
        self.assertEqual(dict(out.reading.extras), {})
        self.assertNotIn("sensor.h", t.states)

    def test_an_entity_added_and_removed_in_one_event_is_removed(self) -> None:
        """Found by fuzzing: the removal stands and the state is never read again."""
        t = tracker(b_power="sensor.b", a_power="sensor.a", c_power="sensor.c")
        base = {"a": {"unit_of_measurement": "W"}, "lc": 1700000000.0}
        out = t.apply_event({"a": {"sensor.b": {"s": "5", **base}}, "c": {"sensor.b": {"+": {"s": "6"}}},
                             "r": ["sensor.b"]})
        self.assertNotIn("sensor.b", t.states)
        self.assertEqual(out.down, "sensor.b was removed from Home Assistant")

    def test_array_frame_is_several_messages(self) -> None:
        frames = ha.parse_frame(b'[{"id":1,"type":"result","success":true,"result":null},'
                                b'{"id":1,"type":"event","event":{"a":{}}}]')
        self.assertEqual([f["type"] for f in frames], ["result", "event"])
        self.assertEqual(ha.parse_frame(b'{"type":"auth_required","ha_version":"2021.5.3"}'),
                         [{"type": "auth_required", "ha_version": "2021.5.3"}])
        for bad in (b"[1, 2]", b'"x"', b"{"):
            with self.assertRaises(ValueError):
                ha.parse_frame(bad)

    def test_merge_rules(self) -> None:
        state = {"s": "1", "a": {"icon": "x", "unit_of_measurement": "W"}, "c": "ctx1",
                 "lc": 1.0, "lu": 2.0}
        ha.merge_diff(state, {"+": {"s": "2", "lc": 3.0, "c": {"parent_id": "p"}}})
        self.assertNotIn("lu", state)  # a state write: lu == lc again
        self.assertEqual(ha.last_updated(state), 3.0)
        self.assertEqual(state["c"], {"id": "ctx1", "parent_id": "p"})
        ha.merge_diff(state, {"+": {"lu": 4.0, "c": "ctx2"}, "-": {"a": ["icon"]}})
        self.assertEqual((state["lc"], state["lu"], state["c"], state["a"]),
                         (3.0, 4.0, "ctx2", {"unit_of_measurement": "W"}))
        states: dict[str, Any] = {}
        self.assertEqual(ha.apply_event(states, {"c": {"sensor.x": {"+": {"s": "1"}}}}), (set(), set()))

    def test_force_update_same_value_is_a_new_sample(self) -> None:
        t = tracker(power="sensor.p")
        t.apply_event({"a": {"sensor.p": {"s": "100", "a": {"unit_of_measurement": "W"}, "lc": 10.0}}})
        out = t.apply_event({"c": {"sensor.p": {"+": {"lc": 11.0, "c": "y"}}}})
        self.assertEqual(out.reading.measured_at, 11.0)

    def test_same_instant_in_two_events_is_nudged_forward(self) -> None:
        t = tracker(power="sensor.p", a_voltage="sensor.v")
        t.apply_event({"a": {"sensor.p": {"s": "100", "a": {"unit_of_measurement": "W"}, "lc": 10.0},
                             "sensor.v": {"s": "230", "a": {"unit_of_measurement": "V"}, "lc": 10.0}}})
        out = t.apply_event({"c": {"sensor.p": {"+": {"s": "200", "lc": 20.0}}}})
        self.assertEqual(out.reading.measured_at, 20.0)
        out = t.apply_event({"c": {"sensor.v": {"+": {"s": "231", "lc": 20.0}}}})
        self.assertEqual(out.reading.measured_at, 20.001)
        self.assertEqual(out.reading.phases[0].voltage, 231.0)


class ReadingTests(SynchronousTestCase):
    def feed(self, t: ha.Tracker, values: dict[str, tuple[str, str | None]], ts: float = 100.0) -> Reading:
        event = {"a": {e: {"s": s, "a": {"unit_of_measurement": u} if u else {}, "lc": ts}
                       for e, (s, u) in values.items()}}
        out = t.apply_event(event)
        self.assertIsNotNone(out.reading, out)
        return out.reading

    def test_total_goes_on_phase_a(self) -> None:
        r = self.feed(tracker(power="sensor.p"), {"sensor.p": ("-1.5", "kW")})
        self.assertEqual(len(r.phases), 1)
        self.assertEqual(r.phase(0).act_power, -1500.0)
        self.assertEqual((r.phase(1).act_power, r.phase(2).act_power), (0.0, 0.0))
        self.assertEqual(r.phase(0).voltage, 230.0)
        self.assertIsNone(r.energy)

    def test_import_minus_export_and_invert(self) -> None:
        r = self.feed(tracker(power="sensor.i", power_export="sensor.e"),
                      {"sensor.i": ("0.8", "kW"), "sensor.e": ("300", "W")})
        self.assertEqual(r.total_act_power, 500.0)
        r = self.feed(tracker(power="sensor.p", invert=True), {"sensor.p": ("500", "W")})
        self.assertEqual(r.total_act_power, -500.0)

    def test_three_phases_with_voltage_current_pf_frequency(self) -> None:
        t = tracker(a_power="sensor.pa", b_power="sensor.pb", c_power="sensor.pc",
                    a_voltage="sensor.va", a_current="sensor.ia", b_pf="sensor.pfb", frequency="sensor.f")
        r = self.feed(t, {"sensor.pa": ("230", "W"), "sensor.pb": ("-100", "W"), "sensor.pc": ("0", "W"),
                          "sensor.va": ("230", "V"), "sensor.ia": ("2", "A"), "sensor.pfb": ("50", "%"),
                          "sensor.f": ("49.98", "Hz")})
        a, b, c = r.phases
        self.assertEqual((a.voltage, a.current, a.aprt_power, a.pf), (230.0, 2.0, 460.0, 0.5))
        self.assertEqual((b.act_power, b.pf, b.aprt_power), (-100.0, -0.5, 200.0))
        self.assertEqual((c.act_power, c.pf), (0.0, 0.0))
        self.assertEqual({a.freq, b.freq, c.freq}, {49.98})
        # a current too small for the power (averaged values) keeps |pf| <= 1
        r = self.feed(t, {"sensor.ia": ("0.5", "A"), "sensor.pa": ("300", "W")}, ts=101.0)
        self.assertEqual((r.phases[0].aprt_power, r.phases[0].pf), (300.0, 1.0))

    def test_energy_counters_on_phase_a_in_wh(self) -> None:
        t = tracker(power="sensor.p", energy_import=("sensor.t1", "sensor.t2"), energy_export="sensor.x")
        r = self.feed(t, {"sensor.p": ("1", "W"), "sensor.t1": ("4.426", "kWh"),
                          "sensor.t2": ("2399", "Wh"), "sensor.x": ("2.444", "kWh")})
        self.assertEqual(len(r.energy), 1)
        self.assertAlmostEqual(r.energy[0][0], 6825.0)
        self.assertAlmostEqual(r.energy[0][1], 2444.0)
        # until every counter is known there are no counters (the Meter integrates)
        t = tracker(power="sensor.p", energy_import="sensor.t1", energy_export="sensor.x")
        self.assertIsNone(self.feed(t, {"sensor.p": ("1", "W"), "sensor.t1": ("1", "kWh")}).energy)

    def test_circuits_are_extras_with_their_share(self) -> None:
        t = tracker(power="sensor.p", circuits={"hvac": "sensor.h", "oven": "sensor.o"})
        r = self.feed(t, {"sensor.p": ("2", "kW"), "sensor.h": ("500", "W"), "sensor.o": ("unavailable", None)})
        self.assertEqual(dict(r.extras), {"circuit.hvac": 500.0, "circuit_share.hvac": 0.25})
        r = self.feed(t, {"sensor.p": ("-100", "W")}, ts=101.0)
        self.assertEqual(dict(r.extras), {"circuit.hvac": 500.0})  # no share of an export

    def test_auxiliary_unavailable_is_left_out_not_down(self) -> None:
        t = tracker(power="sensor.p", a_voltage="sensor.v")
        self.feed(t, {"sensor.p": ("100", "W"), "sensor.v": ("240", "V")})
        out = t.apply_event({"c": {"sensor.v": {"+": {"s": "unavailable", "lc": 101.0}}}})
        self.assertIsNone(out.down)
        self.assertEqual(out.reading.phases[0].voltage, 230.0)

    def test_waiting_until_every_power_entity_has_a_value(self) -> None:
        t = tracker(power="sensor.i", power_export="sensor.e")
        out = t.apply_event({"a": {"sensor.i": {"s": "5", "a": {"unit_of_measurement": "W"}, "lc": 1.0}}})
        self.assertIsNone(out.reading)
        self.assertEqual(out.waiting, ["sensor.e"])
        out = t.not_found("sensor.e")
        self.assertEqual(out.down, "sensor.e does not exist in Home Assistant")

    def test_smoothing(self) -> None:
        t = tracker(power="sensor.p", smoother=ha.Smoother(window=3))
        powers = [self.feed(t, {"sensor.p": (str(v), "W")}, ts=float(i)).total_act_power
                  for i, v in enumerate((300, 600, 900, 1200), start=1)]
        self.assertEqual(powers, [300.0, 450.0, 600.0, 900.0])
        t = tracker(power="sensor.p", smoother=ha.Smoother(alpha=0.5))
        powers = [self.feed(t, {"sensor.p": (str(v), "W")}, ts=float(i)).total_act_power
                  for i, v in enumerate((100, 300, 300), start=1)]
        self.assertEqual(powers, [100.0, 200.0, 250.0])


class DiscoveryTests(SynchronousTestCase):
    def test_check_24_prefs_shapes(self) -> None:
        legacy = {"energy_sources": [{"type": "grid", "flow_from": [{"stat_energy_from": "sensor.imp"}],
                                      "flow_to": [{"stat_energy_to": "sensor.exp"}],
                                      "power": [{"stat_rate": "sensor.net"}], "cost_adjustment_day": 0}],
                  "device_consumption": []}
        current = {"energy_sources": [{"type": "grid", "stat_energy_from": "sensor.imp",
                                       "stat_energy_to": "sensor.exp", "stat_rate": "sensor.net",
                                       "cost_adjustment_day": 0}], "device_consumption": []}
        for prefs in (legacy, current):
            entities, invert = ha.mapping_from_prefs(prefs)
            self.assertEqual(entities, {"energy_import": "sensor.imp", "energy_export": "sensor.exp",
                                        "power": "sensor.net"})
            self.assertFalse(invert)

    def test_check_24_power_config(self) -> None:
        inverted = {"energy_sources": [{"type": "grid", "stat_energy_from": None,
                                        "stat_rate": "sensor.energy_power_grid_inv_sensor_meter",
                                        "power_config": {"stat_rate_inverted": "sensor.meter"}}]}
        mapping = ha.discover(inverted, [])
        self.assertEqual((dict(mapping.entities), mapping.invert, mapping.origin),
                         ({"power": "sensor.meter"}, True, "energy_prefs"))
        t = ha.Tracker(mapping)
        out = t.apply_rest([rest("sensor.meter", "500")])
        self.assertEqual(out.reading.total_act_power, -500.0)
        two = {"energy_sources": [{"type": "grid", "power_config": {"stat_rate_from": "sensor.f",
                                                                   "stat_rate_to": "sensor.t"}}]}
        mapping = ha.discover(two, [])
        t = ha.Tracker(mapping)
        out = t.apply_rest([rest("sensor.f", "800"), rest("sensor.t", "300")])
        self.assertEqual(out.reading.total_act_power, 500.0)

    def test_tariffs_summed_external_statistics_skipped(self) -> None:
        prefs = {"energy_sources": [
            {"type": "grid", "stat_energy_from": "sensor.t1", "stat_energy_to": None},
            {"type": "grid", "stat_energy_from": "sensor.t2", "stat_energy_to": "dsmr:export"},
            {"type": "solar", "stat_energy_from": "sensor.pv", "stat_rate": "sensor.pv_power"}],
            "device_consumption": [{"stat_consumption": "sensor.hvac_energy", "stat_rate": "sensor.hvac_w",
                                    "name": "Heat pump"}]}
        entities, _ = ha.mapping_from_prefs(prefs)
        self.assertEqual(entities, {"energy_import": ("sensor.t1", "sensor.t2")})
        self.assertEqual(ha.circuits_from_prefs(prefs), {"heat_pump": "sensor.hvac_w"})
        # power from heuristics, energy from prefs
        mapping = ha.discover(prefs, [shared.state("sensor.p1_meter_power", "5", **HOMEWIZARD_POWER)])
        self.assertEqual(dict(mapping.entities), {"energy_import": ("sensor.t1", "sensor.t2"),
                                                  "power": "sensor.p1_meter_power"})
        self.assertEqual(mapping.origin, "energy_prefs+heuristics")
        self.assertEqual(dict(mapping.circuits), {"heat_pump": "sensor.hvac_w"})

    def test_dsmr_heuristics(self) -> None:
        mapping = ha.discover(None, DSMR_STATES)
        self.assertEqual(dict(mapping.entities), {
            "power": "sensor.electricity_meter_power_consumption",
            "power_export": "sensor.electricity_meter_power_production",
            "a_voltage": "sensor.electricity_meter_voltage_phase_l1",
            "energy_import": ("sensor.electricity_meter_energy_consumption_tarif_1",
                              "sensor.electricity_meter_energy_consumption_tarif_2"),
            "energy_export": "sensor.electricity_meter_energy_production_tarif_1"})
        self.assertEqual(mapping.origin, "heuristics")
        # cabinet is not a grid ("net"), solar is not a load; today/max are excluded
        self.assertEqual(dict(mapping.circuits), {"hvac": "sensor.power_hvac",
                                                  "kitchen_cabinet": "sensor.kitchen_cabinet_power",
                                                  "washing_machine": "sensor.washing_machine_power"})
        self.assertEqual(dict(ha.discover(None, DSMR_STATES, want_circuits=False).circuits), {})

    def test_per_phase_and_signed_net_heuristics(self) -> None:
        states = [shared.state(f"sensor.p1_meter_active_power_l{n}", "1", **{**W, "friendly_name": f"P1 L{n}"})
                  for n in (1, 2, 3)]
        states.append(shared.state("sensor.p1_meter_power", "3", **HOMEWIZARD_POWER))
        states.append(shared.state("sensor.p1_meter_voltage_l2", "231",
                            **{**VOLTAGE, "friendly_name": "P1 Meter Voltage phase 2"}))
        mapping = ha.discover(None, states)
        self.assertEqual(dict(mapping.entities), {
            "a_power": "sensor.p1_meter_active_power_l1", "b_power": "sensor.p1_meter_active_power_l2",
            "c_power": "sensor.p1_meter_active_power_l3", "b_voltage": "sensor.p1_meter_voltage_l2"})
        self.assertEqual(dict(ha.discover(None, states[3:]).entities), {
            "power": "sensor.p1_meter_power", "b_voltage": "sensor.p1_meter_voltage_l2"})

    def test_nothing_found(self) -> None:
        self.assertIsNone(ha.discover(None, [shared.state("sensor.power_hvac", "5", **W)]))
        self.assertIsNone(ha.discover({"energy_sources": []}, []))

    def test_mapping_describe_and_ids(self) -> None:
        mapping = ha.EntityMapping({"power": "sensor.p", "energy_import": ("sensor.a", "sensor.p")},
                                   circuits={"x": "sensor.x"}, origin="heuristics")
        self.assertEqual(mapping.entity_ids(), ["sensor.p", "sensor.a", "sensor.x"])
        self.assertEqual(json.loads(json.dumps(mapping.describe()))["entities"]["energy_import"],
                         ["sensor.a", "sensor.p"])


class OptionsTests(SynchronousTestCase):
    def parse(self, **source: Any) -> Any:
        body = {"type": "homeassistant", "url": "http://ha:8123", "token": "t0k3n", **source}
        return parse_config({"meters": {"grid": {"source": body}}, "devices": []}, "(test)", env={})

    def test_valid_and_secret_free_repr(self) -> None:
        config = self.parse(entities={"power": "sensor.p", "energy_import": ["sensor.t1", "sensor.t2"]},
                            circuits={"hvac": "sensor.power_hvac"}, smoothing={"alpha": 0.3}, mode="poll",
                            interval="5s")
        options = config.meters["grid"].source.options
        self.assertEqual(options.entities.energy_import, ("sensor.t1", "sensor.t2"))
        self.assertEqual(options.interval, 5.0)
        self.assertNotIn("t0k3n", repr(options))
        self.assertNotIn("t0k3n", repr(config))
        self.assertEqual(self.parse(circuits="auto").meters["grid"].source.options.circuits, "auto")

    def test_errors(self) -> None:
        for source, key in (({"entities": {"power": "sensor.p", "a_power": "sensor.a"}}, "entities.power"),
                            ({"entities": {"power": "Sensor P"}}, "entities.power"),
                            ({"entities": {"a_voltage": "sensor.v"}}, "entities.power"),
                            ({"entities": {"power_export": "sensor.e", "a_power": "sensor.a"}},
                             "entities.power_export"),
                            ({"url": "ha:8123"}, "url"), ({"token": " "}, "token"),
                            ({"smoothing": {"window": 3, "alpha": 0.5}}, "smoothing.window"),
                            ({"smoothing": {"alpha": 0}}, "smoothing.alpha"),
                            ({"circuits": {"Hvac!": "sensor.x"}}, "circuits.Hvac!"),
                            ({"mode": "push"}, "mode"), ({"reconnect_max": "0.5s"}, "reconnect_max")):
            with self.assertRaises(ConfigError, msg=source) as caught:
                self.parse(**source)
            self.assertEqual(caught.exception.key, f"meters.grid.source.{key}", caught.exception)
            self.assertNotIn("t0k3n", str(caught.exception))
