"""Profiles from well-kept libraries: a stochastic household (richardsonpy) and clear-sky PV (pvlib).

Both work offline: richardsonpy ships its appliance, lighting, occupancy and
weather (German test reference year) tables inside the package, pvlib
computes clear sky from solar geometry (Ineichen with a given Linke
turbidity, so no turbidity table is looked up). They are imported only here
and only when a scenario asks for them (the ``lab`` extra installs them).

richardsonpy (GPL-3.0) draws from Python's and numpy's global random
generators; we seed both per run and put their previous states back, so a run
is deterministic per seed and leaves nothing behind. Its ``ElectricLoad``
insists on a whole year of irradiance, so one day is simulated with the
library's own day wrapper (``ElectricityProfile.power_sim``), as
``ElectricLoad`` does per day.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Site:
    """Where and when the PV runs (UTC)."""

    latitude: float = 52.52
    longitude: float = 13.40
    altitude: float = 40.0
    tilt: float = 30.0
    azimuth: float = 180.0
    date: str = "2026-06-21"
    start: str = "10:30"  # UTC time of the run's second 0
    linke_turbidity: float = 3.0


class ProfileError(Exception):
    """A library the scenario needs is missing or failed (one clear line)."""


def richardson_day(seed: int, occupants: int = 3, day_of_year: int = 171,
                   annual_kwh: float = 3800.0) -> list[float]:
    """One day of household load (W) at 1-minute resolution, 1440 values, for ``seed``."""
    try:
        import numpy as np
        import richardsonpy
        import richardsonpy.classes.appliance as appliances
        import richardsonpy.classes.lighting as lighting
        import richardsonpy.classes.occupancy as occupancy
        import richardsonpy.classes.stochastic_el_load_wrapper as wrapper
        import richardsonpy.functions.load_radiation as radiation
    except ImportError as exc:
        raise ProfileError(f"this scenario needs richardsonpy (pip install 'meteremu[lab]'): {exc}") from None
    inputs = os.path.join(os.path.dirname(richardsonpy.__file__), "inputs")
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        direct, diffuse = radiation.get_rad_from_try_path()
        hour = day_of_year * 24
        irradiance = (direct + diffuse)[hour:hour + 25]
        per_minute = np.interp(np.arange(1440), np.arange(25) * 60, irradiance)
        occ = occupancy.Occupancy(number_occupants=occupants, initial_day=1, nb_days=1)
        # 9 % of a household's electricity is lighting (the library's own split).
        apps = appliances.Appliances(os.path.join(inputs, "Appliances.csv"), annual_consumption=0.91 * annual_kwh,
                                     randomize_appliances=True, prev_heat_dev=True)
        bulbs = lighting.load_lighting_profile(filename=os.path.join(inputs, "LightBulbs.csv"), index=0)
        total, _light, _apps = wrapper.ElectricityProfile(apps, bulbs).power_sim(
            irradiation=per_minute, weekend=False, day=day_of_year, occupancy=occ.occupancy)
        return [float(v) for v in total]
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def clear_sky_pv(site: Site, duration: float, peak_w: float, step: float = 10.0) -> list[float]:
    """AC power (W) of a ``peak_w`` array on ``site`` every ``step`` s for ``duration`` s.

    Plane-of-array irradiance from pvlib's clear sky (Ineichen) and solar
    position; power is ``peak_w · POA / 1000 W/m²`` (a performance ratio is
    left to the peak). Values past the end are included so callers can
    interpolate up to ``duration``.
    """
    try:
        import pandas as pd
        from pvlib import irradiance
        from pvlib.location import Location
    except ImportError as exc:
        raise ProfileError(f"this scenario needs pvlib (pip install 'meteremu[lab]'): {exc}") from None
    count = int(duration // step) + 2
    times = pd.date_range(f"{site.date} {site.start}", periods=count, freq=f"{int(step * 1000)}ms", tz="UTC")
    where = Location(site.latitude, site.longitude, tz="UTC", altitude=site.altitude)
    sky = where.get_clearsky(times, model="ineichen", linke_turbidity=site.linke_turbidity)
    sun = where.get_solarposition(times)
    poa = irradiance.get_total_irradiance(site.tilt, site.azimuth, sun["apparent_zenith"], sun["azimuth"],
                                          sky["dni"], sky["ghi"], sky["dhi"])["poa_global"]
    return [max(0.0, float(v)) * peak_w / 1000.0 for v in poa.fillna(0.0)]
