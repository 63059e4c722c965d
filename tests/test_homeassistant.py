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

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meteremu.config import ConfigError, parse_config
from meteremu.meter import Freshness, Meter
from meteremu.reading import Reading
from meteremu.sources.homeassistant import protocol as ha
from meteremu.sources.homeassistant.client import HomeAssistantSource
from meteremu.sources.homeassistant.options import Entities, HomeAssistantOptions
from tests.support import HTTPClient, asyncio_reactor_skip, start_app, test_config
from tests.support.fake_homeassistant import (
    DSMR_ENERGY,
    DSMR_POWER,
    DSMR_POWER_PRODUCTION,
    HOMEWIZARD_POWER,
    VOLTAGE,
    FakeHomeAssistant,
)
from tests.support.udp import Battery, free_udp_ports

WAIT = 10.0
W = {"unit_of_measurement": "W", "device_class": "power", "state_class": "measurement"}


def rest(entity_id: str, state: str, unit: str | None = "W", ts: str = "2023-11-14T22:13:20+00:00",
         **attributes: Any) -> dict[str, Any]:
    attrs = dict(attributes)
    if unit is not None:
        attrs["unit_of_measurement"] = unit
    return {"entity_id": entity_id, "state": state, "attributes": attrs, "last_changed": ts,
            "last_updated": ts, "context": {"id": "01H", "parent_id": None, "user_id": None}}


def tracker(**entities: Any) -> ha.Tracker:
    circuits = entities.pop("circuits", {})
    invert = entities.pop("invert", False)
    smoother = entities.pop("smoother", None)
    return ha.Tracker(ha.EntityMapping(entities=entities, circuits=circuits, invert=invert), smoother)


# ---------------------------------------------------------------------------------------
# pure: units (check 20)


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


# ---------------------------------------------------------------------------------------
# pure: subscribe_entities diffs (check 22)


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


# ---------------------------------------------------------------------------------------
# pure: the reading


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


# ---------------------------------------------------------------------------------------
# pure: discovery (check 24 + heuristics)


def state(entity_id: str, value: str, **attributes: Any) -> dict[str, Any]:
    return rest(entity_id, value, unit=None, **attributes)


DSMR_STATES = [
    state("sensor.electricity_meter_power_consumption", "0.244", **DSMR_POWER),
    state("sensor.electricity_meter_power_production", "0.0", **DSMR_POWER_PRODUCTION),
    state("sensor.electricity_meter_energy_consumption_tarif_1", "4.426", **DSMR_ENERGY),
    state("sensor.electricity_meter_energy_consumption_tarif_2", "2.399",
          **{**DSMR_ENERGY, "friendly_name": "Electricity Meter Energy consumption (tarif 2)"}),
    state("sensor.electricity_meter_energy_production_tarif_1", "2.444",
          **{**DSMR_ENERGY, "friendly_name": "Electricity Meter Energy production (tarif 1)"}),
    state("sensor.electricity_meter_voltage_phase_l1", "230.0",
          unit_of_measurement="V", device_class="voltage", state_class="measurement"),
    state("sensor.energy_cost_today", "1.2", unit_of_measurement="EUR", device_class="monetary"),
    state("sensor.grid_power_today_max", "3000", **W),
    state("sensor.kitchen_cabinet_power", "12", **W),
    state("sensor.power_hvac", "800", **W),
    state("sensor.solar_power", "2000", **W),
    state("sensor.washing_machine_power", "5", **W),
    state("light.kitchen", "on", friendly_name="Kitchen"),
]


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
        mapping = ha.discover(prefs, [state("sensor.p1_meter_power", "5", **HOMEWIZARD_POWER)])
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
        states = [state(f"sensor.p1_meter_active_power_l{n}", "1", **{**W, "friendly_name": f"P1 L{n}"})
                  for n in (1, 2, 3)]
        states.append(state("sensor.p1_meter_power", "3", **HOMEWIZARD_POWER))
        states.append(state("sensor.p1_meter_voltage_l2", "231",
                            **{**VOLTAGE, "friendly_name": "P1 Meter Voltage phase 2"}))
        mapping = ha.discover(None, states)
        self.assertEqual(dict(mapping.entities), {
            "a_power": "sensor.p1_meter_active_power_l1", "b_power": "sensor.p1_meter_active_power_l2",
            "c_power": "sensor.p1_meter_active_power_l3", "b_voltage": "sensor.p1_meter_voltage_l2"})
        self.assertEqual(dict(ha.discover(None, states[3:]).entities), {
            "power": "sensor.p1_meter_power", "b_voltage": "sensor.p1_meter_voltage_l2"})

    def test_nothing_found(self) -> None:
        self.assertIsNone(ha.discover(None, [state("sensor.power_hvac", "5", **W)]))
        self.assertIsNone(ha.discover({"energy_sources": []}, []))

    def test_mapping_describe_and_ids(self) -> None:
        mapping = ha.EntityMapping({"power": "sensor.p", "energy_import": ("sensor.a", "sensor.p")},
                                   circuits={"x": "sensor.x"}, origin="heuristics")
        self.assertEqual(mapping.entity_ids(), ["sensor.p", "sensor.a", "sensor.x"])
        self.assertEqual(json.loads(json.dumps(mapping.describe()))["entities"]["energy_import"],
                         ["sensor.a", "sensor.p"])


# ---------------------------------------------------------------------------------------
# pure: options


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


# ---------------------------------------------------------------------------------------
# I/O against the fake Home Assistant


def next_reading(meter: Meter, predicate: Any = None, timeout: float = WAIT) -> Deferred[Reading]:
    """The next Reading the meter accepts (that matches ``predicate``)."""
    holder: list[Any] = []

    def cancel(_: Deferred[Reading]) -> None:
        meter.remove_listener(holder[0])

    d: Deferred[Reading] = Deferred(cancel)

    def listener(m: Meter, reading: Reading) -> None:
        if predicate is None or predicate(reading):
            meter.remove_listener(listener)
            d.callback(reading)

    holder.append(listener)
    meter.add_listener(listener)
    return d.addTimeout(timeout, reactor)


def until(condition: Any, timeout: float = WAIT) -> Deferred[None]:
    """Fires when ``condition()`` holds, checked every 5 ms; fails after ``timeout``."""
    d: Deferred[None] = Deferred()
    calls: list[Any] = []

    def check() -> None:
        if d.called:
            return
        if condition():
            d.callback(None)
        else:
            calls[:] = [reactor.callLater(0.005, check)]

    def stop(result: Any) -> Any:
        for call in calls:
            if call.active():
                call.cancel()
        return result

    check()
    return d.addTimeout(timeout, reactor).addBoth(stop)


class LogCapture:
    def __init__(self, case: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(f"{formatEvent(e)} {e!r}" for e in self.events)


class SourceTestBase(TestCase):
    timeout = 30
    skip = asyncio_reactor_skip()

    def setUp(self) -> None:
        self.fake = FakeHomeAssistant(token="s3cret-token-XYZ")
        self.fake.listen()
        self.addCleanup(self.fake.stop)

    def start(self, clock: Any = None, meter_clock: Any = None, **options: Any) -> HomeAssistantSource:
        options.setdefault("url", self.fake.url)
        options.setdefault("token", self.fake.token)
        self.meter = Meter("grid", meter_clock or reactor, stale_after=60.0, source_type="homeassistant")
        self.source = HomeAssistantSource(self.meter, HomeAssistantOptions(**options), reactor,
                                          clock=clock, rng=lambda: 1.0)
        self.source.startService()
        self.addCleanup(self.source.stopService)
        if clock is not None:
            clock.advance(0)
        return self.source

    def subscribed(self, start: int = 0) -> Deferred[Any]:
        return self.fake.wait_type("subscribe_entities", start)

    def connected(self) -> Deferred[None]:
        """Fires once the source handled the subscription result."""
        return until(lambda: self.source.state == "connected")


class WebSocketTests(SourceTestBase):
    @inlineCallbacks
    def test_subscribe_and_push(self) -> Any:
        self.fake.set_state("sensor.grid_power", "512", W)
        self.fake.set_state("sensor.other", "1", W)
        self.start(entities=Entities(power="sensor.grid_power", a_voltage="sensor.not_there_yet"))
        first = yield next_reading(self.meter)
        self.assertEqual(first.total_act_power, 512.0)
        self.assertEqual(first.measured_at, round(self.fake.states["sensor.grid_power"].last_changed, 6))
        yield self.connected()
        auth, *commands = self.fake.received
        self.assertEqual(auth, {"type": "auth", "access_token": "s3cret-token-XYZ"})
        ids = [m["id"] for m in commands]
        self.assertEqual(ids, sorted(set(ids)))  # strictly increasing
        sub = [m for m in commands if m["type"] == "subscribe_entities"][0]
        self.assertEqual(sub["entity_ids"], ["sensor.grid_power", "sensor.not_there_yet"])
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        # a state change is pushed: new value with the entity's timestamp
        d = next_reading(self.meter)
        self.fake.set_state("sensor.grid_power", "-0.25", {**W, "unit_of_measurement": "kW"})
        reading = yield d
        self.assertEqual(reading.total_act_power, -250.0)
        self.assertEqual(reading.measured_at, round(self.fake.states["sensor.grid_power"].last_changed, 6))
        # an entity created later arrives as "a" and joins the reading
        d = next_reading(self.meter)
        self.fake.set_state("sensor.not_there_yet", "231.5", {"unit_of_measurement": "V"})
        reading = yield d
        self.assertEqual(reading.phases[0].voltage, 231.5)
        # REST seeding asked for every watched entity
        self.assertIn("/api/states/sensor.grid_power", self.fake.rest_requests)
        self.assertIn("/api/states/sensor.not_there_yet", self.fake.rest_requests)
        self.assertEqual(self.meter.details["connection"], "connected")
        self.assertEqual(self.meter.details["mapping"]["origin"], "configured")

    @inlineCallbacks
    def test_batched_changes_and_coalesced_frames(self) -> Any:
        for n in "abc":
            self.fake.set_state(f"sensor.{n}", "1", W)
        self.fake.set_state("sensor.h", "1", W)
        self.start(entities=Entities(a_power="sensor.a", b_power="sensor.b", c_power="sensor.c"),
                   circuits={"hvac": "sensor.h"})
        yield next_reading(self.meter)
        yield self.connected()
        d = next_reading(self.meter)
        with self.fake.batch():
            self.fake.set_state("sensor.a", "10")
            self.fake.set_state("sensor.b", "20")
            self.fake.remove("sensor.h")
            self.fake.set_state("sensor.c", "30")
        reading = yield d
        self.assertEqual(reading.powers(), (10.0, 20.0, 30.0))
        self.assertEqual(dict(reading.extras), {})
        self.assertTrue(all(c.coalesce for c in self.fake.connections))

    @inlineCallbacks
    def test_unavailable_is_down_unknown_keeps_the_value(self) -> Any:
        self.fake.set_state("sensor.p", "100", W)
        self.start(entities=Entities(power="sensor.p"))
        yield next_reading(self.meter)
        yield self.connected()
        start = len(self.fake.received)
        self.fake.set_state("sensor.p", "unknown", W)
        self.fake.set_state("sensor.p", "unavailable", W)
        # wait until the source has seen it: a ping round trip orders the stream
        self.source._ping(self.source.session)
        yield self.fake.wait_type("ping", start)
        yield until(lambda: self.meter.freshness() is Freshness.DOWN)
        self.assertEqual(self.meter.down_reason, "sensor.p is unavailable")
        self.assertEqual(self.meter.latest.total_act_power, 100.0)  # no sample from unknown
        d = next_reading(self.meter)
        self.fake.set_state("sensor.p", "150", W)
        reading = yield d
        self.assertEqual(reading.total_act_power, 150.0)
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_missing_entity_is_down_until_it_appears(self) -> Any:
        self.start(entities=Entities(power="sensor.late"))
        yield until(lambda: self.meter.freshness() is Freshness.DOWN)
        self.assertEqual(self.meter.down_reason, "sensor.late does not exist in Home Assistant")
        yield self.connected()
        d = next_reading(self.meter)
        self.fake.set_state("sensor.late", "42", W)
        yield d
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)

    @inlineCallbacks
    def test_bad_token_backs_off_without_a_retry_storm(self) -> Any:
        log = LogCapture(self)
        clock = Clock()
        self.start(clock=clock, token="wrong-token-123", entities=Entities(power="sensor.p"),
                   reconnect_max=300.0)
        # The REST seed runs beside the WebSocket; its timeout is on the same clock
        # until its 401 arrives: wait for it too (it was the order dependence).
        yield until(lambda: self.source.state == "bad token" and self.source.session is None
                    and not self.source.http.busy)
        self.assertEqual(self.fake.auth_failures, 1)
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.assertIn("rejected the access token", self.meter.stats.last_error)
        delays = [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()]
        self.assertEqual(delays, [300.0])
        clock.advance(299)
        self.assertEqual(self.fake.auth_failures, 1)
        self.assertNotIn("wrong-token-123", log.text())
        self.assertNotIn("wrong-token-123", json.dumps(self.meter.details))

    @inlineCallbacks
    def test_ping_pong_and_reconnect_when_no_pong(self) -> Any:
        clock = Clock()
        meter_clock = Clock()
        self.fake.set_state("sensor.p", "100", W)
        self.start(clock=clock, meter_clock=meter_clock, entities=Entities(power="sensor.p"),
                   ping_interval=20.0, ping_timeout=10.0, reconnect_min=2.0)
        yield next_reading(self.meter)
        yield self.connected()
        # a steady value stays fresh while pongs arrive (design.md §4)
        for _ in range(5):
            meter_clock.advance(20)
            start = len(self.fake.received)
            clock.advance(20)
            ping = yield self.fake.wait_type("ping", start)
            yield until(lambda: self.source.session.ping_id is None)
            self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        self.assertGreater(ping["id"], 1)
        # HA stops answering: no pong within ping_timeout → drop, back off, reconnect, resubscribe
        self.fake.answer_pings = False
        first = self.fake.connections[0]
        start = len(self.fake.received)
        clock.advance(20)
        yield self.fake.wait_type("ping", start)
        clock.advance(10)
        yield first.closed
        yield until(lambda: self.source.state == "disconnected")
        self.assertEqual(self.meter.stats.last_error, "Home Assistant connection lost: no pong within 10 s")
        self.assertIsNot(self.meter.freshness(), Freshness.DOWN)  # soft: decays to stale
        meter_clock.advance(61)
        self.assertEqual(self.meter.freshness(), Freshness.STALE)
        self.fake.answer_pings = True
        start = len(self.fake.received)
        clock.advance(2.0)
        sub = yield self.subscribed(start)
        yield self.connected()
        new_ids = [m["id"] for m in self.fake.received[start:] if "id" in m]
        self.assertEqual(new_ids, sorted(set(new_ids)))
        self.assertEqual(new_ids[0], 1)  # fresh ids on the new connection
        self.assertEqual(sub["entity_ids"], ["sensor.p"])
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)  # alive again, same value

    @inlineCallbacks
    def test_disconnect_backoff_and_resync(self) -> Any:
        clock = Clock()
        self.fake.set_state("sensor.p", "100", W)
        self.start(clock=clock, entities=Entities(power="sensor.p"), reconnect_min=1.0, reconnect_max=4.0)
        yield next_reading(self.meter)
        yield self.connected()
        port = self.fake.port
        number = port.getHost().port
        yield self.fake.drop_connections()
        yield port.stopListening()  # HA is gone for a while
        yield until(lambda: self.source.state == "disconnected")
        failures = self.meter.stats.failures
        delays = []
        for _ in range(4):
            call = clock.getDelayedCalls()[0]
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
            yield until(lambda n=failures: self.meter.stats.failures > n)
            failures = self.meter.stats.failures
            self.assertIn("cannot connect to Home Assistant", self.meter.stats.last_error)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 4.0])
        # back, with a value that changed meanwhile: the snapshot brings it
        self.fake.set_state("sensor.p", "300", W)
        self.fake.port = reactor.listenTCP(number, self.fake.site, interface="127.0.0.1")
        d = next_reading(self.meter, lambda r: r.total_act_power == 300.0)
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        yield d
        yield self.connected()
        self.assertEqual(self.source.attempts, 0)

    @inlineCallbacks
    def test_stop_while_connecting_is_clean(self) -> Any:
        self.start(entities=Entities(power="sensor.p"))
        yield self.source.stopService()
        self.assertEqual(self.source.state, "stopped")
        self.start(entities=Entities(power="sensor.p"))
        yield self.fake.wait_type("auth")
        yield self.source.stopService()
        yield until(lambda: not self.fake.connections)

    @inlineCallbacks
    def test_garbage_frames_are_ignored(self) -> Any:
        self.fake.set_state("sensor.p", "100", W)
        self.start(entities=Entities(power="sensor.p"))
        yield next_reading(self.meter)
        yield self.connected()
        sub = self.source.session.subscription
        self.fake.raw(b"not json")
        self.fake.raw([1, 2])
        self.fake.raw({"id": sub + 100, "type": "event", "event": {"a": {"sensor.p": {"s": "9"}}}})
        d = next_reading(self.meter)
        self.fake.set_state("sensor.p", "200", W)
        reading = yield d
        self.assertEqual(reading.total_act_power, 200.0)


class DiscoveryIOTests(SourceTestBase):
    @inlineCallbacks
    def test_energy_prefs_first(self) -> Any:
        self.fake.prefs = {"energy_sources": [{"type": "grid", "stat_energy_from": "sensor.imp",
                                               "stat_energy_to": "sensor.exp",
                                               "power_config": {"stat_rate_inverted": "sensor.meter"}}],
                           "device_consumption": [{"stat_consumption": "sensor.hp_e", "stat_rate": "sensor.hp",
                                                   "name": "Heat pump"}]}
        self.fake.set_state("sensor.meter", "500", W)
        self.fake.set_state("sensor.imp", "10", DSMR_ENERGY)
        self.fake.set_state("sensor.exp", "2", DSMR_ENERGY)
        self.fake.set_state("sensor.hp", "250", W)
        self.fake.set_state("sensor.p1_meter_power", "1", HOMEWIZARD_POWER)  # not chosen: prefs win
        log = LogCapture(self)
        self.start()
        reading = yield next_reading(self.meter)
        self.assertEqual(reading.total_act_power, -500.0)
        self.assertEqual(reading.energy[0], (10000.0, 2000.0))
        self.assertEqual(dict(reading.extras), {"circuit.heat_pump": 250.0})
        mapping = self.meter.details["mapping"]
        self.assertEqual(mapping, {"origin": "energy_prefs", "invert": True,
                                   "entities": {"power": "sensor.meter", "energy_import": "sensor.imp",
                                                "energy_export": "sensor.exp"},
                                   "circuits": {"heat_pump": "sensor.hp"}})
        sub = yield self.subscribed()
        self.assertEqual(sorted(sub["entity_ids"]), ["sensor.exp", "sensor.hp", "sensor.imp", "sensor.meter"])
        self.assertIn('"origin": "energy_prefs"', log.text())

    @inlineCallbacks
    def test_heuristics_without_prefs(self) -> Any:
        for obj in DSMR_STATES:
            self.fake.set_state(obj["entity_id"], obj["state"], obj["attributes"])
        self.start()
        reading = yield next_reading(self.meter)
        self.assertEqual(reading.total_act_power, 244.0)
        self.assertAlmostEqual(reading.energy[0][0], 6825.0)
        self.assertEqual(self.meter.details["mapping"]["origin"], "heuristics")
        self.assertEqual(reading.extras["circuit.hvac"], 800.0)

    @inlineCallbacks
    def test_nothing_to_find_is_down(self) -> Any:
        clock = Clock()
        self.fake.set_state("light.kitchen", "on", {})
        self.start(clock=clock, reconnect_max=120.0)
        yield self.fake.wait_type("get_states")
        yield until(lambda: self.meter.freshness() is Freshness.DOWN and self.source.session is None)
        self.assertIn("found no grid power sensor", self.meter.down_reason)
        self.assertEqual(self.source.state, "no power sensor")
        self.assertEqual([c.getTime() - clock.seconds() for c in clock.getDelayedCalls()], [120.0])
        # the next look finds one
        self.fake.set_state("sensor.grid_power", "70", W)
        start = len(self.fake.received)
        clock.advance(120.0)
        yield self.subscribed(start)
        yield until(lambda: self.meter.freshness() is Freshness.FRESH)
        self.assertEqual(self.meter.latest.total_act_power, 70.0)

    @inlineCallbacks
    def test_configured_entities_with_auto_circuits(self) -> Any:
        self.fake.set_state("sensor.p", "1000", W)
        self.fake.set_state("sensor.power_hvac", "250", W)
        self.start(entities=Entities(power="sensor.p"), circuits="auto")
        reading = yield next_reading(self.meter, lambda r: "circuit.hvac" in r.extras)
        self.assertEqual(reading.extras["circuit_share.hvac"], 0.25)


class PollTests(SourceTestBase):
    @inlineCallbacks
    def test_poll_mode(self) -> Any:
        clock, meter_clock = Clock(), Clock()
        self.fake.set_state("sensor.p", "100", W)
        self.start(clock=clock, meter_clock=meter_clock, mode="poll", interval=2.0,
                   entities=Entities(power="sensor.p"))
        reading = yield next_reading(self.meter)
        self.assertEqual(reading.total_act_power, 100.0)
        self.assertEqual(self.fake.connections, [])  # no WebSocket in poll mode
        delay = yield self.next_poll(clock)
        self.assertEqual(delay, 2.0)
        d = next_reading(self.meter)
        self.fake.set_state("sensor.p", "0.3", {**W, "unit_of_measurement": "kW"})
        clock.advance(delay)
        reading = yield d
        self.assertEqual(reading.total_act_power, 300.0)
        # a steady value: every successful poll is a heartbeat
        for _ in range(40):
            delay = yield self.next_poll(clock)
            meter_clock.advance(delay)
            clock.advance(delay)
        yield self.next_poll(clock)
        self.assertEqual(self.meter.freshness(), Freshness.FRESH)
        self.assertEqual(self.meter.latest.total_act_power, 300.0)
        # a rejected token: down, then one poll per reconnect_max only
        self.fake.reject_auth = True
        count = len(self.fake.rest_requests)
        clock.advance(2.0)
        delay = yield self.next_poll(clock)
        self.assertEqual(self.source.state, "bad token")
        self.assertEqual(self.meter.freshness(), Freshness.DOWN)
        self.assertIn("rejected the access token (HTTP 401)", self.meter.down_reason)
        self.assertEqual(delay, 60.0)
        self.assertEqual(len(self.fake.rest_requests), count + 1)

    def next_poll(self, clock: Clock) -> Deferred[float]:
        """Waits until the current poll is over; → the delay to the next one."""
        source = self.source
        d = until(lambda: source._timer is not None and source._timer.active() and not source.http.busy)
        return d.addCallback(lambda _: source._timer.getTime() - clock.seconds())

    @inlineCallbacks
    def test_poll_discovery_uses_rest_states(self) -> Any:
        self.fake.set_state("sensor.p1_meter_power", "-75", HOMEWIZARD_POWER)
        self.start(mode="poll", interval=30.0)
        reading = yield next_reading(self.meter)
        self.assertEqual(reading.total_act_power, -75.0)
        self.assertIn("/api/states", self.fake.rest_requests)
        self.assertEqual(self.meter.details["mapping"]["entities"], {"power": "sensor.p1_meter_power"})


class AppTests(TestCase):
    """The whole gateway: fake HA → meteremu → a battery polling over UDP."""

    timeout = 30
    skip = asyncio_reactor_skip()

    @inlineCallbacks
    def test_state_change_is_served_over_udp_and_secrets_stay_hidden(self) -> Any:
        log = LogCapture(self)
        fake = FakeHomeAssistant(token="TOPSECRET-abc.def")
        fake.listen()
        self.addCleanup(fake.stop)
        fake.set_state("sensor.p1_meter_power", "512", HOMEWIZARD_POWER)
        ports = free_udp_ports(1)
        config = test_config(self.mktemp(), meters={"grid": {"source": {
            "type": "homeassistant", "url": fake.url, "token": "${HA_TOKEN:-TOPSECRET-abc.def}"}}},
            devices=[{"type": "shelly_pro_3em", "udp_ports": ports}])
        app = yield start_app(self, config)
        meter = app.meters["grid"]
        if meter.latest is None:
            yield next_reading(meter)
        yield fake.wait_type("subscribe_entities")
        battery = Battery()
        port = reactor.listenUDP(0, battery, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        raw = yield battery.ask(b'{"id":1,"method":"EM.GetStatus","params":{"id":0}}', ports[0])
        self.assertEqual(json.loads(raw)["result"]["a_act_power"], 512.0)
        d = next_reading(meter)
        fake.set_state("sensor.p1_meter_power", "-1234.5")
        yield d
        raw = yield battery.ask(b'{"id":2,"method":"EM.GetStatus","params":{"id":0}}', ports[0])
        result = json.loads(raw)["result"]
        self.assertEqual((result["a_act_power"], result["b_act_power"], result["total_act_power"]),
                         (-1234.5, 0.0, -1234.5))
        # /healthz and /metrics: the source is visible, the token is not
        http = HTTPClient(self)
        base = f"http://127.0.0.1:{app.http_port()}"
        response, body = yield http.get(base + "/healthz")
        health = json.loads(body)["meters"]["grid"]
        self.assertEqual((health["source"], health["state"]), ("homeassistant", "fresh"))
        self.assertEqual(health["details"]["mapping"]["entities"], {"power": "sensor.p1_meter_power"})
        self.assertEqual(health["details"]["connection"], "connected")
        _, metrics = yield http.get(base + "/metrics")
        self.assertIn(b'meteremu_source_polls_total{meter="grid",result="ok"}', metrics)
        # a bad token later (HA restarted with the token revoked) is shown without the token
        fake.reject_auth = True
        yield fake.drop_connections()
        yield until(lambda: meter.freshness() is Freshness.DOWN)
        response, body = yield http.get(base + "/healthz")
        self.assertIn(b"rejected the access token", body)
        for text in (body, metrics, log.text().encode(), json.dumps(meter.details).encode(),
                     repr(config).encode()):
            self.assertNotIn(b"TOPSECRET", text)
