"""The simulated house: pure physics, no I/O, stepped by the caller with explicit times.

What is in it:

* the sun on the configured PV arrays (`shared.sky`) times a seeded cloud profile
  (`CloudySky`: one profile per day, cloudiness from the season unless fixed);
* a base load of unregistered devices (`shared.sky.base_load_w`, by local time);
* one store per Energy Socket (a boiler, a bike battery): an 'on' socket draws its
  `max_power_usage` until the store is full, then only a thermostat's standby (a few %),
  until hot-water use or heat loss empties it below the hysteresis; stores lose energy over
  the day (standing loss, and a draw pattern, by default morning and evening showers);
* the Plug-In Batteries, as the P1 meter's `/api/batteries` steers them: `zero` (charge on
  surplus, discharge into deficit, within power and capacity, shared across the batteries
  in proportion to their power), `standby`, `to_full` (full power, from the grid if need be,
  until all are full, then back to `zero`), and the `charge_allowed` / `discharge_allowed`
  permissions of `zero` (`zero` with only `charge_allowed` charges on surplus and never
  discharges, and so on; none is `standby`), as HomeWizard documents them;
* the P1 meter: grid power = base load + sockets + battery charging − solar (negative =
  export), with import/export counters per tariff.

Every counter is integrated from the same piecewise-constant powers, so over any period
`solar + grid import == base load + socket draws + battery charge − battery discharge +
grid export` holds exactly (up to float rounding).

Time: `House.advance_to(when)` steps from the house's current time to `when` in sub-steps
of at most `HouseOptions.max_step_s`; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from shared.clock import as_utc
from shared.config import DevicesConfig
from shared.sky import PanelArray, base_load_w, clear_sky_power_w, cloud_factors

BatteryMode = Literal["zero", "to_full", "standby", "predictive"]
BATTERY_MODES: tuple[BatteryMode, ...] = ("zero", "to_full", "standby", "predictive")
#: A socket's relay when the power comes back after a cut (`House.power_cut`).
RelaysAfterCut = Literal["previous", "on", "off"]
RELAYS_AFTER_CUT: tuple[RelaysAfterCut, ...] = ("previous", "on", "off")
CHARGE_ALLOWED = "charge_allowed"
DISCHARGE_ALLOWED = "discharge_allowed"
PERMISSIONS = (CHARGE_ALLOWED, DISCHARGE_ALLOWED)

#: Step of the cloud profile, s.
CLOUD_STEP_S = 60
_DAY_S = 86_400
#: Typical cloudiness per month (Netherlands-like), used when none is fixed.
_SEASONAL_CLOUDINESS = (0.70, 0.65, 0.55, 0.45, 0.40, 0.38, 0.40, 0.42, 0.48, 0.58, 0.68, 0.72)
_EPS_WH = 1e-9


class SwitchLockedError(Exception):
    """The socket's `switch_lock` is on: it cannot be turned off (v1 error id 8)."""


@dataclass(frozen=True, slots=True)
class DrawEvent:
    """Energy taken from a store: `fraction` of its capacity, spread evenly over
    `duration_min` minutes from local time `start` (e.g. a shower from the boiler)."""

    start: time
    duration_min: float
    fraction: float

    def __post_init__(self) -> None:
        if not self.duration_min > 0:
            raise ValueError(f"draw duration must be > 0 min (got {self.duration_min})")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"draw fraction must be within 0..1 (got {self.fraction})")


#: Morning and evening showers: 35 % and 30 % of the store per day.
DEFAULT_DRAWS = (
    DrawEvent(time(7, 0), 30.0, 0.35),
    DrawEvent(time(19, 0), 60.0, 0.30),
)


@dataclass(frozen=True, slots=True)
class HouseOptions:
    """How the house behaves (defaults: a Dutch house, 300 W base load)."""

    seed: int = 0
    #: 0 clear .. 1 overcast; None = by season, varying from day to day.
    cloudiness: float | None = None
    base_load_w: float = 300.0
    #: Local time zone of the house (base load, draws, tariffs).
    timezone: str = "Europe/Amsterdam"
    #: Power of a full store's thermostat, as a fraction of the socket's power.
    standby_fraction: float = 0.03
    #: A full store reheats once it has lost this fraction of its capacity.
    hysteresis: float = 0.03
    #: Standing heat loss of a store, fraction of its content per hour.
    store_loss_per_h: float = 0.005
    draws: tuple[DrawEvent, ...] = DEFAULT_DRAWS
    initial_store_fraction: float = 0.5
    initial_soc: float = 0.5
    #: Round-trip efficiency of the batteries (split evenly over charge and discharge).
    battery_efficiency: float = 0.9
    max_step_s: float = 10.0

    def __post_init__(self) -> None:
        if self.cloudiness is not None and not 0 <= self.cloudiness <= 1:
            raise ValueError(f"cloudiness must be within 0..1 (got {self.cloudiness})")
        if not 0 < self.standby_fraction < 0.1:
            raise ValueError(f"standby_fraction must be within 0..0.1 ({self.standby_fraction})")
        if not 0 < self.battery_efficiency <= 1:
            raise ValueError(f"battery_efficiency must be within 0..1 ({self.battery_efficiency})")
        if not self.max_step_s > 0:
            raise ValueError(f"max_step_s must be > 0 (got {self.max_step_s})")
        for name in ("initial_store_fraction", "initial_soc", "hysteresis", "store_loss_per_h"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be within 0..1 (got {value})")
        ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class DeviceOverride:
    """Per-device start state (from the simulator's own config)."""

    #: Socket: fill of its store; battery: state of charge (0..1).
    initial_fraction: float | None = None
    power_on: bool | None = None
    switch_lock: bool | None = None
    draws: tuple[DrawEvent, ...] | None = None


# --- sky -----------------------------------------------------------------------------


class CloudySky:
    """A seeded cloud profile, one per UTC day: the fraction of clear-sky sun getting through.

    The same profile drives the house's PV and the simulated weather service, so a
    forecast made from the weather matches the sun the house gets.
    """

    def __init__(self, seed: int = 0, cloudiness: float | None = None) -> None:
        self.seed = seed
        self.fixed_cloudiness = cloudiness
        self._days: dict[date, list[float]] = {}

    def _day_seed(self, day: date) -> int:
        return (self.seed * 1_000_003 + day.toordinal() * 7_919) & 0x7FFF_FFFF

    def cloudiness_on(self, day: date) -> float:
        """The day's cloudiness: the fixed one, or the season's with a seeded day-to-day spread."""
        if self.fixed_cloudiness is not None:
            return self.fixed_cloudiness
        base = _SEASONAL_CLOUDINESS[day.month - 1]
        # a cheap deterministic spread in -0.3..0.3 (no global random state)
        spread = ((self._day_seed(day) * 2_654_435_761) % 10_007) / 10_007 - 0.5
        return min(1.0, max(0.0, base + 0.6 * spread))

    def _profile(self, day: date) -> list[float]:
        profile = self._days.get(day)
        if profile is None:
            if len(self._days) > 64:
                self._days.clear()
            profile = cloud_factors(
                _DAY_S // CLOUD_STEP_S, CLOUD_STEP_S, self.cloudiness_on(day), self._day_seed(day)
            )
            self._days[day] = profile
        return profile

    def factor(self, when: datetime) -> float:
        """Transmission (0.05..1) at an instant."""
        utc = as_utc(when)
        seconds = utc.hour * 3600 + utc.minute * 60 + utc.second + utc.microsecond / 1e6
        return self._profile(utc.date())[min(int(seconds // CLOUD_STEP_S), 1439)]


def arrays_of(devices: DevicesConfig) -> list[PanelArray]:
    """The PV arrays of a devices file, as `shared.sky` takes them."""
    return [
        PanelArray(
            latitude=p.quartz_parameters.latitude,
            longitude=p.quartz_parameters.longitude,
            capacity_kwp=p.quartz_parameters.capacity_kwp,
            tilt=p.quartz_parameters.tilt,
            orientation=p.quartz_parameters.orientation,
        )
        for p in devices.solar_panels
    ]


# --- devices -------------------------------------------------------------------------


@dataclass
class SocketState:
    """An Energy Socket and the store behind it."""

    name: str
    max_power_w: float
    capacity_wh: float
    stored_wh: float
    draws: tuple[DrawEvent, ...]
    power_on: bool = True
    switch_lock: bool = False
    brightness: int = 255
    #: The thermostat is satisfied: the store was full and has not lost the hysteresis yet.
    satisfied: bool = False
    #: Power drawn now (W): the last step's mean.
    power_w: float = 0.0
    #: Energy the socket has passed on (its kWh counter, in Wh).
    import_wh: float = 0.0
    #: Energy taken out of the store (hot water, heat loss), Wh.
    used_wh: float = 0.0
    #: Who switched it last: "api", "manual", "start" or "power-back" (after a power cut).
    switched_by: str = "start"

    @property
    def full(self) -> bool:
        return self.stored_wh >= self.capacity_wh - 1e-6

    def draw_power_w(self, local: datetime) -> float:
        """Power taken out of the store by use at local time `local` (W)."""
        minute = local.hour * 60 + local.minute + local.second / 60
        total = 0.0
        for ev in self.draws:
            begin = ev.start.hour * 60 + ev.start.minute
            if (minute - begin) % 1440 < ev.duration_min:
                total += ev.fraction * self.capacity_wh / (ev.duration_min / 60)
        return total


@dataclass
class BatteryState:
    """A Plug-In Battery."""

    name: str
    max_power_w: float
    capacity_wh: float
    stored_wh: float
    #: AC power now, W: positive = charging.
    power_w: float = 0.0
    #: AC energy in (charged) and out (discharged), Wh: its kWh counters.
    import_wh: float = 0.0
    export_wh: float = 0.0

    @property
    def soc_pct(self) -> float:
        return 100.0 * self.stored_wh / self.capacity_wh

    @property
    def full(self) -> bool:
        return self.stored_wh >= self.capacity_wh - 1e-6

    @property
    def empty(self) -> bool:
        return self.stored_wh <= 1e-6

    @property
    def cycles(self) -> float:
        """Full discharges so far."""
        return self.export_wh / self.capacity_wh


@dataclass
class BatteryControl:
    """The batteries' group control, as the P1 meter's `/api/batteries` holds it."""

    mode: BatteryMode = "zero"
    permissions: frozenset[str] = frozenset(PERMISSIONS)
    #: What the control aims at now (W, + = charging).
    target_power_w: float = 0.0


@dataclass
class Meter:
    """The P1 meter: grid power and the smart meter's counters (t1 = low tariff)."""

    power_w: float = 0.0
    import_t1_wh: float = 0.0
    import_t2_wh: float = 0.0
    export_t1_wh: float = 0.0
    export_t2_wh: float = 0.0
    tariff: int = 2

    @property
    def import_wh(self) -> float:
        return self.import_t1_wh + self.import_t2_wh

    @property
    def export_wh(self) -> float:
        return self.export_t1_wh + self.export_t2_wh


@dataclass
class Totals:
    """Energy over the whole run, Wh: what the conservation check adds up."""

    solar_wh: float = 0.0
    base_load_wh: float = 0.0
    sockets_wh: float = 0.0
    battery_charge_wh: float = 0.0
    battery_discharge_wh: float = 0.0
    import_wh: float = 0.0
    export_wh: float = 0.0

    def imbalance_wh(self) -> float:
        """(sources) − (sinks): 0 when energy is conserved."""
        sources = self.solar_wh + self.import_wh + self.battery_discharge_wh
        sinks = self.base_load_wh + self.sockets_wh + self.battery_charge_wh + self.export_wh
        return sources - sinks


def low_tariff(local: datetime) -> bool:
    """Dutch low tariff (tariff 1): weekends and nights 23:00–07:00."""
    return local.weekday() >= 5 or local.hour >= 23 or local.hour < 7


def share_power(total_w: float, limits: list[float], weights: list[float]) -> list[float]:
    """Split `total_w` (>= 0) in proportion to `weights`, each share within its limit.

    What a saturated battery cannot take goes to the others (water filling); the result
    sums to min(total, sum of limits).
    """
    shares = [0.0] * len(limits)
    open_ = [i for i, lim in enumerate(limits) if lim > 0 and weights[i] > 0]
    left = min(total_w, sum(limits[i] for i in open_))
    while left > 1e-12 and open_:
        weight = sum(weights[i] for i in open_)
        saturated = []
        given = 0.0
        for i in open_:
            room = limits[i] - shares[i]
            offer = left * weights[i] / weight
            if offer >= room:
                shares[i] += room
                given += room
                saturated.append(i)
            else:
                shares[i] += offer
                given += offer
        left -= given
        if not saturated:
            break
        open_ = [i for i in open_ if i not in saturated]
    return shares


# --- the house -----------------------------------------------------------------------


#: Socket events the house keeps (`House.events`).
MAX_EVENTS = 100_000


class House:
    """Sun, clouds, base load, sockets with stores, batteries and the P1 meter."""

    def __init__(
        self,
        devices: DevicesConfig,
        start: datetime,
        options: HouseOptions | None = None,
        overrides: Mapping[str, DeviceOverride] | None = None,
    ) -> None:
        self.options = options or HouseOptions()
        overrides = overrides or {}
        self.devices = devices
        self.now = as_utc(start)
        self.tz = ZoneInfo(self.options.timezone)
        self.sky = CloudySky(self.options.seed, self.options.cloudiness)
        self.arrays = arrays_of(devices)
        self.sockets: dict[str, SocketState] = {}
        for s in devices.sockets:
            o = overrides.get(s.device_name, DeviceOverride())
            fill = o.initial_fraction
            fill = self.options.initial_store_fraction if fill is None else fill
            lock = bool(o.switch_lock)
            self.sockets[s.device_name] = SocketState(
                name=s.device_name,
                max_power_w=s.max_power_usage,
                capacity_wh=s.energy_capacity,
                stored_wh=fill * s.energy_capacity,
                draws=self.options.draws if o.draws is None else o.draws,
                power_on=lock or (True if o.power_on is None else o.power_on),
                switch_lock=lock,
            )
        self.batteries: dict[str, BatteryState] = {}
        for b in devices.batteries:
            o = overrides.get(b.device_name, DeviceOverride())
            soc = self.options.initial_soc if o.initial_fraction is None else o.initial_fraction
            self.batteries[b.device_name] = BatteryState(
                name=b.device_name,
                max_power_w=b.max_power_usage,
                capacity_wh=b.energy_capacity,
                stored_wh=soc * b.energy_capacity,
            )
        self.control = BatteryControl()
        self.meter = Meter(tariff=1 if low_tariff(self.now.astimezone(self.tz)) else 2)
        self.totals = Totals()
        self.solar_w = 0.0
        self.base_w = 0.0
        #: What happened to the sockets, in order: relay changes (who switched), stores
        #: becoming full and losing enough to reheat ("not-full"); the last `MAX_EVENTS`
        #: kept, `events_total` counted (for tests and soak runs: the truth about
        #: switching, whatever the services say).
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.events_total = 0
        #: A power cut in progress ends then (`power_cut`); the relays after it.
        self.cut_until: datetime | None = None
        self.cut_relays: RelaysAfterCut = "previous"

    # --- what the environment gives ------------------------------------------------

    def clear_sky_w(self, when: datetime) -> float:
        return sum(clear_sky_power_w(when, a) for a in self.arrays)

    def solar_power_w(self, when: datetime) -> float:
        """PV power of all arrays at an instant (W)."""
        clear = self.clear_sky_w(when)
        return clear * self.sky.factor(when) if clear > 0 else 0.0

    def base_load_power_w(self, when: datetime) -> float:
        return base_load_w(when.astimezone(self.tz), self.options.base_load_w)

    # --- stepping ------------------------------------------------------------------

    def advance_to(self, when: datetime) -> None:
        """Run the physics from `now` to `when` (a time in the past is ignored)."""
        target = as_utc(when)
        while self.now < target:
            end = target if self.cut_until is None else min(target, self.cut_until)
            dt = min(self.options.max_step_s, (end - self.now).total_seconds())
            if dt <= 1e-6:
                self.now = end
            else:
                self.step(dt)
            if self.cut_until is not None and self.now >= self.cut_until:
                self._power_back()

    @property
    def powered(self) -> bool:
        """The grid is there (no power cut in progress)."""
        return self.cut_until is None

    def power_cut(self, until: datetime, relays: RelaysAfterCut = "previous") -> None:
        """The grid fails now until `until`: nothing in the house draws or produces (the
        inverter stops without the grid), the stores only cool; then every socket comes back
        with its relay as it was (`previous`, as HomeWizard's Energy Socket does) or `on` /
        `off` (a socket that powers up in a fixed state)."""
        end = as_utc(until)
        if end <= self.now:
            raise ValueError("a power cut must end after now")
        if relays not in RELAYS_AFTER_CUT:
            raise ValueError(f"relays: one of {', '.join(RELAYS_AFTER_CUT)}")
        if self.cut_until is None:
            for name in self.sockets:
                self._event(name, "power-cut", "grid")
        self.cut_until = max(end, self.cut_until or end)
        self.cut_relays = relays

    def _power_back(self) -> None:
        self.cut_until = None
        for s in self.sockets.values():
            self._event(s.name, "power-back", "grid")
            if self.cut_relays != "previous":
                want = self.cut_relays == "on" or s.switch_lock
                if want != s.power_on:
                    s.power_on = want
                    s.switched_by = "power-back"
                    self._event(s.name, "on" if want else "off", "power-back")

    def step(self, dt_s: float) -> None:
        """One step of `dt_s` seconds; powers are constant within it (taken at its middle)."""
        if not dt_s > 0:
            raise ValueError(f"a step must be > 0 s (got {dt_s})")
        dt_h = dt_s / 3600
        mid = self.now + timedelta(seconds=dt_s / 2)
        local = mid.astimezone(self.tz)
        powered = self.powered
        solar = self.solar_power_w(mid) if powered else 0.0
        base = self.base_load_power_w(mid) if powered else 0.0
        sockets = sum(self._step_socket(s, local, dt_s, powered) for s in self.sockets.values())
        net = base + sockets - solar
        battery = self._step_batteries(net, dt_s) if powered else 0.0
        grid = net + battery
        self.solar_w, self.base_w = solar, base
        # counters: all from the same powers, so they add up
        t = self.totals
        t.solar_wh += solar * dt_h
        t.base_load_wh += base * dt_h
        t.sockets_wh += sockets * dt_h
        t.battery_charge_wh += max(battery, 0.0) * dt_h
        t.battery_discharge_wh += max(-battery, 0.0) * dt_h
        t.import_wh += max(grid, 0.0) * dt_h
        t.export_wh += max(-grid, 0.0) * dt_h
        m = self.meter
        m.power_w = grid
        m.tariff = 1 if low_tariff(local) else 2
        if m.tariff == 1:
            m.import_t1_wh += max(grid, 0.0) * dt_h
            m.export_t1_wh += max(-grid, 0.0) * dt_h
        else:
            m.import_t2_wh += max(grid, 0.0) * dt_h
            m.export_t2_wh += max(-grid, 0.0) * dt_h
        self.now = self.now + timedelta(seconds=dt_s)

    def _step_socket(
        self, s: SocketState, local: datetime, dt_s: float, powered: bool = True
    ) -> float:
        """Advance one socket's store; return the socket's mean power over the step (W).
        Not `powered` (a power cut): its relay draws nothing, whatever its state."""
        dt_h = dt_s / 3600
        used = s.draw_power_w(local) * dt_h + s.stored_wh * self.options.store_loss_per_h * dt_h
        standby = self.options.standby_fraction * s.max_power_w
        energy_in = 0.0
        if s.power_on and powered:
            if s.satisfied:
                energy_in = standby * dt_h
            else:
                room = s.capacity_wh - s.stored_wh + used
                full_power = s.max_power_w * dt_h
                if full_power >= room:  # full within this step: heat, then only standby
                    heating_h = max(room, 0.0) / s.max_power_w
                    energy_in = max(room, 0.0) + standby * (dt_h - heating_h)
                    s.satisfied = True
                    self._event(s.name, "full", "thermostat", self.now + timedelta(hours=heating_h))
                else:
                    energy_in = full_power
        used = min(used, s.stored_wh + energy_in)
        s.stored_wh = min(s.capacity_wh, max(0.0, s.stored_wh + energy_in - used))
        s.used_wh += used
        if s.satisfied and s.stored_wh < (1 - self.options.hysteresis) * s.capacity_wh:
            s.satisfied = False
            self._event(s.name, "not-full", "thermostat")
        if not s.power_on or not powered:
            s.power_w = 0.0
        elif s.satisfied:
            s.power_w = standby
        else:
            s.power_w = s.max_power_w
        s.import_wh += energy_in
        return energy_in / dt_h

    def _step_batteries(self, net_w: float, dt_s: float) -> float:
        """Run the batteries' control for one step given the house's net power without
        them (+ = import); return their total AC power (+ = charging)."""
        batteries = list(self.batteries.values())
        c = self.control
        if not batteries:
            c.target_power_w = 0.0
            return 0.0
        dt_h = dt_s / 3600
        eff = math.sqrt(self.options.battery_efficiency)
        charge_limits = [
            min(b.max_power_w, max(0.0, b.capacity_wh - b.stored_wh) / (eff * dt_h))
            for b in batteries
        ]
        discharge_limits = [
            min(b.max_power_w, max(0.0, b.stored_wh) * eff / dt_h) for b in batteries
        ]
        weights = [b.max_power_w for b in batteries]
        if c.mode == "standby":
            c.target_power_w = 0.0
            powers = [0.0] * len(batteries)
        elif c.mode == "to_full":
            c.target_power_w = sum(b.max_power_w for b in batteries if not b.full)
            powers = charge_limits
        else:  # zero (and predictive, which is zero as far as the house can tell)
            target = -net_w
            if CHARGE_ALLOWED not in c.permissions:
                target = min(target, 0.0)
            if DISCHARGE_ALLOWED not in c.permissions:
                target = max(target, 0.0)
            total_max = sum(weights)
            c.target_power_w = min(total_max, max(-total_max, target))
            if target >= 0:
                powers = share_power(target, charge_limits, weights)
            else:
                powers = [-p for p in share_power(-target, discharge_limits, weights)]
        total = 0.0
        for b, p in zip(batteries, powers, strict=True):
            if p >= 0:
                b.stored_wh = min(b.capacity_wh, b.stored_wh + p * eff * dt_h)
                b.import_wh += p * dt_h
            else:
                b.stored_wh = max(0.0, b.stored_wh + p / eff * dt_h)
                b.export_wh += -p * dt_h
            b.power_w = p
            total += p
        if c.mode == "to_full" and all(b.full for b in batteries):
            c.mode, c.permissions = "zero", frozenset(PERMISSIONS)
        return total

    # --- commands (what the device APIs and the control endpoint change) ----------

    def socket(self, name: str) -> SocketState:
        try:
            return self.sockets[name]
        except KeyError:
            raise KeyError(f"no socket named {name!r}") from None

    def set_socket(
        self,
        name: str,
        *,
        power_on: bool | None = None,
        switch_lock: bool | None = None,
        brightness: int | None = None,
        by: str = "api",
    ) -> dict[str, Any]:
        """Change a socket's state as `PUT /api/v1/state` does; return what was set.

        Raises SwitchLockedError when the socket would end up off with `switch_lock` on.
        Turning `switch_lock` on turns the socket on.
        """
        s = self.socket(name)
        lock = s.switch_lock if switch_lock is None else switch_lock
        if lock and power_on is False:
            raise SwitchLockedError("power_on cannot be turned off when switch_lock is on")
        if brightness is not None and not 0 <= brightness <= 255:
            raise ValueError("brightness value limited to 0-255")
        changed: dict[str, Any] = {}
        if switch_lock is not None:
            s.switch_lock = switch_lock
            changed["switch_lock"] = switch_lock
            if switch_lock and not s.power_on:
                s.power_on = True
                s.switched_by = by
                self._event(s.name, "on", by)
        if power_on is not None:
            if power_on != s.power_on:
                s.switched_by = by
                self._event(s.name, "on" if power_on else "off", by)
            s.power_on = power_on
            changed["power_on"] = power_on
        if brightness is not None:
            s.brightness = brightness
            changed["brightness"] = brightness
        if not s.power_on:
            s.power_w = 0.0
        return changed

    def _event(self, socket: str, event: str, by: str, when: datetime | None = None) -> None:
        at = self.now if when is None else when
        self.events.append(
            {
                "n": self.events_total,
                "time": at.isoformat(),
                "socket": socket,
                "event": event,
                "by": by,
            }
        )
        self.events_total += 1

    def events_since(self, n: int) -> list[dict[str, Any]]:
        """The kept events numbered `n` and later (the oldest are gone past `MAX_EVENTS`)."""
        first = self.events_total - len(self.events)
        return list(self.events)[max(0, n - first) :]

    def manual_switch(self, name: str, power_on: bool | None = None) -> bool:
        """A person presses the socket's button: toggle (or set) it; return the new state."""
        s = self.socket(name)
        want = (not s.power_on) if power_on is None else power_on
        self.set_socket(name, power_on=want, by="manual")
        return want

    def set_battery_control(
        self,
        *,
        mode: BatteryMode | None = None,
        permissions: Iterable[str] | None = None,
    ) -> None:
        """Change the batteries' group control as `PUT /api/batteries` does (HomeWizard's
        api-documentation, docs/v2/batteries: "Backwards compatibility with standby mode").

        `standby` clears the permissions; `zero` alone grants both; `to_full` shows none
        (they are read-only in it: ValueError when they are changed without leaving it) and
        returns to `zero` with both once every battery is full. Permissions alone in
        `standby` switch to `zero`; `zero` with none left is `standby`.
        """
        c = self.control
        perms = None if permissions is None else frozenset(permissions)
        if perms is not None:
            unknown = perms - set(PERMISSIONS)
            if unknown:
                raise ValueError(f"unknown permission {sorted(unknown)[0]!r}")
        if mode is not None and mode not in BATTERY_MODES:
            raise ValueError(f"unknown mode {mode!r}")
        target = mode if mode is not None else c.mode
        if perms is not None and target == "to_full":
            raise ValueError("permissions are read-only in to_full")
        if target == "to_full":
            c.mode, c.permissions = "to_full", frozenset()
            return
        if target == "standby" and perms is None:
            c.mode, c.permissions = "standby", frozenset()
            return
        if perms is None:  # zero (or predictive) alone: both allowed
            perms = frozenset(PERMISSIONS) if mode is not None else c.permissions
        if target == "standby":  # permissions given in standby: zero with them
            target = "zero"
        c.permissions = perms
        c.mode = "standby" if target == "zero" and not perms else target

    # --- reading -------------------------------------------------------------------

    def battery_group(self) -> dict[str, Any]:
        """The batteries' group figures, as `/api/batteries` reports them."""
        bats = list(self.batteries.values())
        c = self.control
        charge_ok = CHARGE_ALLOWED in c.permissions or c.mode == "to_full"
        discharge_ok = DISCHARGE_ALLOWED in c.permissions and c.mode != "to_full"
        if c.mode == "standby":
            charge_ok = discharge_ok = False
        return {
            "mode": c.mode,
            "permissions": [p for p in PERMISSIONS if p in c.permissions],
            "charge_to_full": c.mode == "to_full",
            "battery_count": len(bats),
            "power_w": sum(b.power_w for b in bats),
            "target_power_w": c.target_power_w,
            "max_consumption_w": sum(b.max_power_w for b in bats if not b.full)
            if charge_ok
            else 0.0,
            "max_production_w": sum(b.max_power_w for b in bats if not b.empty)
            if discharge_ok
            else 0.0,
        }

    def snapshot(self) -> dict[str, Any]:
        """The whole state, JSON-ready (for the control endpoint and tests)."""
        return {
            "time": self.now.isoformat(),
            "solar_w": round(self.solar_w, 1),
            "base_load_w": round(self.base_w, 1),
            "grid_w": round(self.meter.power_w, 1),
            "power_cut_until": self.cut_until.isoformat() if self.cut_until is not None else None,
            "cloudiness": round(self.sky.cloudiness_on(self.now.date()), 3),
            "cloud_factor": round(self.sky.factor(self.now), 3),
            "sockets": {
                s.name: {
                    "power_on": s.power_on,
                    "switch_lock": s.switch_lock,
                    "brightness": s.brightness,
                    "power_w": round(s.power_w, 1),
                    "energy_stored_wh": round(s.stored_wh, 1),
                    "energy_capacity_wh": s.capacity_wh,
                    "full": s.full,
                    "thermostat_satisfied": s.satisfied,
                    "switched_by": s.switched_by,
                    "import_kwh": round(s.import_wh / 1000, 4),
                    "used_kwh": round(s.used_wh / 1000, 4),
                }
                for s in self.sockets.values()
            },
            "batteries": {
                b.name: {
                    "power_w": round(b.power_w, 1),
                    "state_of_charge_pct": round(b.soc_pct, 2),
                    "energy_stored_wh": round(b.stored_wh, 1),
                    "energy_capacity_wh": b.capacity_wh,
                    "import_kwh": round(b.import_wh / 1000, 4),
                    "export_kwh": round(b.export_wh / 1000, 4),
                }
                for b in self.batteries.values()
            },
            "battery_group": self.battery_group(),
            "p1": {
                "power_w": round(self.meter.power_w, 1),
                "tariff": self.meter.tariff,
                "import_kwh": round(self.meter.import_wh / 1000, 4),
                "export_kwh": round(self.meter.export_wh / 1000, 4),
            },
            "totals_wh": {k: round(v, 3) for k, v in vars(self.totals).items()},
        }


def start_of_local_day(when: datetime, tz: ZoneInfo) -> datetime:
    """Local midnight of `when`'s local day, in UTC."""
    local = as_utc(when).astimezone(tz)
    return datetime.combine(local.date(), time(0), tz).astimezone(UTC)


__all__ = [
    "BATTERY_MODES",
    "CHARGE_ALLOWED",
    "DEFAULT_DRAWS",
    "DISCHARGE_ALLOWED",
    "PERMISSIONS",
    "BatteryControl",
    "BatteryMode",
    "BatteryState",
    "CloudySky",
    "DeviceOverride",
    "DrawEvent",
    "House",
    "HouseOptions",
    "Meter",
    "SocketState",
    "SwitchLockedError",
    "Totals",
    "arrays_of",
    "low_tariff",
    "share_power",
    "start_of_local_day",
]
