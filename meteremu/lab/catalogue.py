"""The scenario catalogue (``meteremu-lab list``).

Each scenario reproduces a situation batteries meet in the field or a
failure the peers' users report (specs/batteries.md §2.3, §5): steps,
washer hunting (#473), noise, solar with clouds, saturation (drain and
fill), one to four batteries of mixed models, cadences and limits, a slow
10 s P1 meter (#327), a meter outage, packet loss and latency spikes.
Durations are kept to what a behaviour needs, so the whole catalogue × 10
seeds fits the benchmark budget.
"""

from __future__ import annotations

from meteremu.lab.battery import BatterySpec as B
from meteremu.lab.household import Appliance as A
from meteremu.lab.household import Cloud, HouseholdSpec
from meteremu.lab.profiles import Site
from meteremu.lab.scenario import MeterSpec, Scenario

STEPS = (A("kettle", 0.08), A("dishwasher", 0.2), A("kettle", 0.45), A("oven", 0.55, duration=900.0),
         A("step", 0.85, power=600.0, duration=240.0))
WASHER = (A("washer", 0.02, duration=1700.0), A("kettle", 0.5))
NOON = Site(start="10:00")
CLOUDS = (Cloud(0.4), Cloud(0.55), Cloud(0.75, duration=300.0, factor=0.4))
SLOW = MeterSpec(interval=10.0, latency=(0.5, 1.0))
WASH_METER = MeterSpec(latency=(0.8, 1.0))


def _all() -> list[Scenario]:
    steps = HouseholdSpec(appliances=STEPS)
    noisy = HouseholdSpec(noise=150.0, appliances=STEPS)
    washer = HouseholdSpec(appliances=WASHER)
    solar = HouseholdSpec(appliances=(A("kettle", 0.3), A("hob", 0.6)), pv_peak=1800.0, site=NOON, clouds=CLOUDS)
    big_solar = HouseholdSpec(appliances=(A("kettle", 0.3), A("oven", 0.5, duration=900.0)), pv_peak=3000.0,
                              pv_phase=None, site=NOON, clouds=CLOUDS)
    evening = HouseholdSpec(base=(350.0, 200.0, 150.0), appliances=(A("hob", 0.1), A("oven", 0.4),
                                                                    A("dishwasher", 0.75)))
    fill = HouseholdSpec(base=(120.0, 60.0, 40.0), pv_peak=3200.0, pv_phase=None, site=NOON)
    ev = HouseholdSpec(appliances=(A("ev", 0.2, duration=1200.0), A("kettle", 0.6)))
    house = HouseholdSpec(base=(40.0, 30.0, 30.0), richardson=True, appliances=(A("kettle", 0.3),),
                          pv_peak=1200.0, site=Site(start="07:00"))
    return [
        Scenario("venus_steps", "one Venus E (V3, 0.45 s): kettle, dishwasher, oven, a 600 W block",
                 3600, steps, (B("venus"),), tags=("single", "steps")),
        Scenario("venus_steps_slow", "one Venus E on a slow P1 meter (10 s samples, 0.5-1 s late)",
                 3600, steps, (B("venus"),), meter=SLOW, tags=("single", "slow")),
        Scenario("venus_v2_steps", "one Venus V2 polling every 3.1 s", 3600, steps,
                 (B("venus", cadence=3.1),), tags=("single", "steps")),
        Scenario("venus_washer", "washing machine: 120 W motor pausing 3 s every 16 s (#473)",
                 1800, washer, (B("venus"),), meter=WASH_METER, tags=("single", "hunting")),
        Scenario("venus_noisy", "±150 W noisy base load", 1800, noisy, (B("venus"),), tags=("single", "noise")),
        Scenario("venus_solar", "1.8 kW PV on phase a at noon, three clouds", 3600, solar,
                 (B("venus", soc=0.4),), tags=("single", "solar")),
        Scenario("venus_drain", "evening load empties a 35 % battery (saturation)", 5400, evening,
                 (B("venus", soc=0.35, capacity=2560.0),), tags=("single", "saturation")),
        Scenario("venus_fill", "3.2 kW PV surplus fills an 85 % battery (saturation)", 3600, fill,
                 (B("venus", soc=0.85, capacity=2560.0),), tags=("single", "saturation")),
        Scenario("hmg50_steps", "one HMG-50 (integer law via HME-4, 1 s)", 3600, steps, (B("hmg50"),),
                 tags=("single", "steps")),
        Scenario("hmg50_float_washer", "HMG-50 on its float ramp law, washer", 1800, washer,
                 (B("hmg50_float"),), meter=WASH_METER, tags=("single", "hunting")),
        Scenario("b2500_evening", "one B2500 (DC output, two channels) through an evening", 3600, evening,
                 (B("b2500"),), tags=("single", "steps")),
        Scenario("hoymiles_steps", "one Hoymiles MS-A2 over HTTP", 3600, steps, (B("hoymiles"),),
                 tags=("single", "http")),
        Scenario("growatt_solar", "one Growatt NOAH over HTTP every 3.1 s, PV with clouds", 3600, solar,
                 (B("growatt", soc=0.4),), tags=("single", "http", "solar")),
        Scenario("two_venus_steps", "two Venus E on phases a and b", 3600, steps,
                 (B("venus"), B("venus", phase=1, cadence=0.5)), tags=("multi", "steps")),
        Scenario("two_venus_noisy", "two Venus E, ±150 W noise", 1800, noisy,
                 (B("venus"), B("venus", phase=1, cadence=0.5)), tags=("multi", "noise")),
        Scenario("two_venus_solar", "two Venus E, 3 kW three-phase PV with clouds", 3600, big_solar,
                 (B("venus", soc=0.4), B("venus", phase=1, soc=0.4, cadence=0.5)), tags=("multi", "solar")),
        Scenario("three_venus_phases", "three Venus E on a, b and c", 3600, steps,
                 (B("venus"), B("venus", phase=1, cadence=0.5), B("venus", phase=2, cadence=0.55)),
                 tags=("multi",)),
        Scenario("four_mixed", "Venus V3, HMG-50, Hoymiles and Growatt on one meter (the 1 h benchmark)",
                 3600, steps, (B("venus"), B("hmg50", phase=1), B("hoymiles", phase=2), B("growatt")),
                 tags=("multi", "mixed", "bench")),
        Scenario("mixed_cadence", "Venus V3 (0.45 s) with Venus V2 (3.1 s)", 3600, steps,
                 (B("venus"), B("venus", phase=1, cadence=3.1)), tags=("multi", "mixed")),
        Scenario("mixed_power_limits", "a 2500 W HMG-50 with an 800 W Venus (#655)", 3600, steps,
                 (B("hmg50"), B("venus", phase=1)), tags=("multi", "mixed")),
        Scenario("venus_plus_b2500", "Venus E with a B2500 (#600)", 3600, evening,
                 (B("venus"), B("b2500", phase=1)), tags=("multi", "mixed")),
        Scenario("two_venus_slow", "two Venus E on a 10 s meter (#327)", 3600, steps,
                 (B("venus"), B("venus", phase=1, cadence=0.5)), meter=SLOW, tags=("multi", "slow")),
        Scenario("ev_saturation", "3.7 kW EV beyond two batteries' limits", 2400, ev,
                 (B("venus"), B("hoymiles", phase=1)), tags=("multi", "saturation")),
        Scenario("household_richardson", "a Richardson stochastic household (richardsonpy) with PV, 2 batteries",
                 3600, house, (B("venus"), B("hoymiles", phase=1)), tags=("multi", "stochastic")),
        Scenario("meter_outage", "the meter's publisher is silent twice for 60 s (expire_after 5 s, "
                 "on_stale error)", 1800, steps, (B("venus"), B("hoymiles", phase=1)),
                 meter=MeterSpec(outages=((0.3, 60.0), (0.7, 60.0))), expire_after=5.0,
                 tags=("faults", "outage")),
        Scenario("meter_outage_hold", "the same outage with on_stale hold", 1800, steps,
                 (B("venus"), B("hoymiles", phase=1)), meter=MeterSpec(outages=((0.3, 60.0), (0.7, 60.0))),
                 on_stale="hold", expire_after=5.0, tags=("faults", "outage")),
        Scenario("packet_loss", "5 % of polls and of answers lost, two batteries", 1800, steps,
                 (B("venus"), B("hmg50", phase=1)), meter=MeterSpec(loss=0.05), tags=("faults", "loss")),
        Scenario("short_step", "25 s: a 1 kW step, a Venus over UDP and a Hoymiles over HTTP "
                 "(the test that holds both clocks together)", 25,
                 HouseholdSpec(appliances=(A("step", 0.25, power=1000.0, duration=1000.0, jitter=0.0),)),
                 (B("venus"), B("hoymiles", phase=1)), tags=("short", "realtime")),
        Scenario("four_marstek", "four Marstek batteries for one CT: Venus V3 (0.45 s), HMG-50 (1 s, 2.5 kW), "
                 "Venus V2 (3.1 s) and a 600 W Venus", 3600, steps,
                 (B("venus"), B("hmg50", phase=1), B("venus", phase=2, cadence=3.1),
                  B("venus", cadence=0.5, max_discharge=600.0)), tags=("multi", "mixed", "ct")),
        Scenario("two_venus_one_empty", "an evening with one Venus nearly empty (saturation hand-off)", 3600,
                 evening, (B("venus", soc=0.09, capacity=2560.0), B("venus", phase=1, cadence=0.5)),
                 tags=("multi", "saturation", "ct")),
        Scenario("pair_step", "30 s: a 2 kW step with two Venus E set to 1.2 kW discharge (the real-time "
                 "CT002 and Shelly test)", 30,
                 HouseholdSpec(appliances=(A("step", 0.2, power=2000.0, duration=1000.0, jitter=0.0),)),
                 (B("venus", max_discharge=1200.0), B("venus", phase=1, cadence=0.5, max_discharge=1200.0)),
                 tags=("short", "realtime", "ct")),
        Scenario("pair_step_ungated", "pair_step with no regulation gate: the law steps on every answer, as "
                 "AstraMeter's simulator models it (ours: one step per 3 s)", 30,
                 HouseholdSpec(appliances=(A("step", 0.2, power=2000.0, duration=1000.0, jitter=0.0),)),
                 (B("venus", max_discharge=1200.0, gate=0.0),
                  B("venus", phase=1, cadence=0.5, max_discharge=1200.0, gate=0.0)),
                 tags=("short", "realtime", "ct")),
        Scenario("latency_spikes", "10 % of samples 3 s late (held back in order)", 1800, steps,
                 (B("venus"), B("hoymiles", phase=1)), meter=MeterSpec(spikes=0.1, spike_delay=3.0),
                 tags=("faults", "latency")),
    ]


CATALOGUE: dict[str, Scenario] = {s.name: s for s in _all()}


class UnknownScenario(KeyError):
    pass


def get(name: str) -> Scenario:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownScenario(name) from None
