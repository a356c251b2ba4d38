"""The planning problem and the plan, as JSON (see README "Planning problem").

A problem is what a planner plans from: a forecast surplus per step, the sockets with
their stores and the batteries. A plan is one 0/1 row per socket and the batteries'
planned power per step. Both are plain pydantic models: no I/O here.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

#: Ratio of one step's energy under which a socket counts as full (the original's 10 %).
FULL_MARGIN = 0.1

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
#: A price, EUR/kWh: one number for every step, or one per step.
Price = FiniteFloat | Annotated[list[FiniteFloat], Field(min_length=1, max_length=20_000)]
#: The batteries' mode in one step (the planning README): `zero` is HomeWizard's zero mode
#: (charge on surplus, discharge into deficit), `charge_only` / `discharge_only` zero mode
#: with one permission, `standby` neither, `to_full` charge at full power (grid too) until full.
BatteryMode = Literal["zero", "charge_only", "discharge_only", "standby", "to_full"]
BATTERY_MODES: tuple[BatteryMode, ...] = (
    "zero",
    "charge_only",
    "discharge_only",
    "standby",
    "to_full",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SocketSpec(_Model):
    """One energy-storing load behind an Energy Socket."""

    name: Name
    max_power_usage: PositiveFloat  # W while on and not full
    energy_capacity: PositiveFloat  # Wh the store holds
    energy_stored: NonNegativeFloat = 0.0  # Wh in the store now
    priority: int = 1  # lower first
    daily_need: bool = False  # needed: filled by the horizon's end, from grid if need be
    min_battery_charge: Ratio = 0.0  # optional sockets wait until the battery holds this ratio
    #: Optional sockets, with prices: what a kWh in this store is worth to its owner, EUR
    #: (default: the horizon's mean import price).
    value_eur_kwh: FiniteFloat | None = None

    def room_wh(self) -> float:
        """Energy the store can still take, Wh (never negative)."""
        return max(0.0, self.energy_capacity - self.energy_stored)


class BatterySpec(_Model):
    """One (Plug-In) battery, seen as a store with a charge/discharge power limit."""

    name: Name
    max_power_usage: PositiveFloat  # W, charge and discharge
    energy_capacity: PositiveFloat  # Wh
    energy_stored: NonNegativeFloat = 0.0  # Wh now

    @model_validator(mode="after")
    def _stored_within_capacity(self) -> BatterySpec:
        if self.energy_stored > self.energy_capacity * (1 + 1e-9):
            raise ValueError(
                f"energy_stored {self.energy_stored} Wh exceeds energy_capacity "
                f"{self.energy_capacity} Wh"
            )
        return self


def _per_step(value: float | list[float] | None, n: int) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return list(value)
    return [float(value)] * n


class PlanningProblem(_Model):
    """What a planner plans from (the JSON format of the planning README)."""

    name: str | None = None
    start: AwareDatetime
    step_s: Annotated[int, Field(gt=0, le=86_400)]
    available_power_w: Annotated[list[FiniteFloat], Field(min_length=1, max_length=20_000)]
    sockets: Annotated[list[SocketSpec], Field(max_length=64)] = []
    batteries: Annotated[list[BatterySpec], Field(max_length=16)] = []
    overcharge: bool = True
    #: Minimum time between two switches of one socket (s); 0 = no constraint beyond steps.
    switch_interval_s: Annotated[int, Field(ge=0, le=86_400)] = 300
    #: Current relay state per socket name (optional): counts a switch at the first step.
    initial_on: dict[str, bool] = {}

    # --- money (the planning README): without prices the planner minimises grid import ----
    #: All-in price of a kWh drawn from the grid, EUR/kWh (one number or one per step).
    import_price: Price | None = None
    #: What a kWh sent to the grid earns, EUR/kWh (negative: it costs); with import_price.
    export_price: Price | None = None
    #: In steps whose import price is at or below this, optional sockets may also draw from
    #: grid or battery, EUR/kWh. None: never (the original's rule).
    optional_grid_price_max: FiniteFloat | None = None
    #: Whether the planner may put the batteries in modes other than `zero` (switching them
    #: needs the P1 meter's token: without it the plan assumes `zero` throughout).
    battery_modes: bool = True
    #: The batteries' mode in force now (a change at the first step counts as a switch).
    initial_battery_mode: BatteryMode | None = None

    # --- calm (hwsched's additions for planning in the loop) ------------------------------
    #: What one relay switch (or battery mode change) costs, in Wh of grid import (with
    #: prices: that many Wh at the horizon's mean import price). 0: switches only break ties.
    switch_cost_wh: NonNegativeFloat = 0.0
    #: Shortest on-run / off-run of a socket, s (0: only the switch interval). A needed
    #: socket may break it where its deadline demands it.
    min_on_s: Annotated[int, Field(ge=0, le=86_400)] = 0
    min_off_s: Annotated[int, Field(ge=0, le=86_400)] = 0
    #: Per socket in `initial_on`: seconds it has been in that state (since its last switch),
    #: so `min_on_s` / `min_off_s` hold across re-plans. Absent: long enough.
    initial_since_s: dict[str, NonNegativeFloat] = {}
    #: The previous plan's decisions moved on to this problem's steps (per socket name, 0/1
    #: per step; shorter rows are padded with 0): the planner keeps them unless a change
    #: gains more than `hold_gain_wh` (hysteresis).
    previous: dict[str, list[Literal[0, 1]]] = {}
    #: The previous plan's battery modes moved on to this problem's steps.
    previous_battery_mode: list[BatteryMode] = []
    #: What a plan must gain over keeping `previous` before it replaces it, Wh of import
    #: (with prices: at the mean import price).
    hold_gain_wh: NonNegativeFloat = 0.0
    #: Forecast risk, per hour ahead (with prices; without them it has no effect): forecast
    #: surplus further ahead is less sure than surplus soon. The planner values a Wh sent to
    #: the grid at step k at `export + min(1, forecast_risk_per_h · h_k) · (import − export)`
    #: (h_k: hours from the start to the step's middle; only where import costs more than
    #: export), so of two plans that store the same forecast surplus, the one that stores it
    #: sooner scores better — by the same amount at every re-plan, as the weight is linear
    #: in time. What a plan costs (`simulate`, the money figures) is at the prices
    #: themselves. 0: off (as the planning README's format).
    forecast_risk_per_h: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0

    @field_validator("sockets")
    @classmethod
    def _unique_socket_names(cls, sockets: list[SocketSpec]) -> list[SocketSpec]:
        seen: set[str] = set()
        for s in sockets:
            if s.name in seen:
                raise ValueError(f"duplicate socket name {s.name!r}")
            seen.add(s.name)
        return sockets

    @model_validator(mode="after")
    def _initial_on_names_known(self) -> PlanningProblem:
        names = {s.name for s in self.sockets}
        for what, keys in (
            ("initial_on", self.initial_on),
            ("initial_since_s", self.initial_since_s),
            ("previous", self.previous),
        ):
            unknown = sorted(set(keys) - names)
            if unknown:
                raise ValueError(f"{what} names unknown socket(s): {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _prices_fit(self) -> PlanningProblem:
        if (self.import_price is None) != (self.export_price is None):
            raise ValueError("import_price and export_price go together")
        n = self.n_steps
        for what, value in (
            ("import_price", self.import_price),
            ("export_price", self.export_price),
        ):
            if isinstance(value, list) and len(value) != n:
                raise ValueError(f"{what}: {len(value)} prices for {n} steps")
        if self.optional_grid_price_max is not None and self.import_price is None:
            raise ValueError("optional_grid_price_max needs import_price and export_price")
        return self

    @property
    def priced(self) -> bool:
        """Whether the problem has prices (then the plan minimises net cost)."""
        return self.import_price is not None

    def import_prices(self) -> list[float] | None:
        """The import price per step, EUR/kWh (None without prices)."""
        return _per_step(self.import_price, self.n_steps)

    def export_prices(self) -> list[float] | None:
        """The export price per step, EUR/kWh (None without prices)."""
        return _per_step(self.export_price, self.n_steps)

    def planning_export_prices(self) -> list[float] | None:
        """What the planner values a Wh sent to the grid at per step, EUR/kWh: the export
        price raised by the forecast risk (`forecast_risk_per_h`); None without prices."""
        exp = self.export_prices()
        imp = self.import_prices()
        if exp is None or imp is None or self.forecast_risk_per_h == 0:
            return exp
        r, dt = self.forecast_risk_per_h, self.dt_h
        return [
            e + min(1.0, r * (k + 0.5) * dt) * max(0.0, i - e)
            for k, (i, e) in enumerate(zip(imp, exp, strict=True))
        ]

    @property
    def n_steps(self) -> int:
        return len(self.available_power_w)

    @property
    def dt_h(self) -> float:
        """Step length in hours."""
        return self.step_s / 3600.0

    @property
    def battery_capacity_wh(self) -> float:
        return sum(b.energy_capacity for b in self.batteries)

    @property
    def battery_power_w(self) -> float:
        return sum(b.max_power_usage for b in self.batteries)

    @property
    def battery_stored_wh(self) -> float:
        return sum(b.energy_stored for b in self.batteries)

    def ordered_sockets(self) -> list[SocketSpec]:
        """Sockets in planning order: priority ascending, power descending, then config order."""
        indexed = list(enumerate(self.sockets))
        indexed.sort(key=lambda p: (p[1].priority, -p[1].max_power_usage, p[0]))
        return [s for _, s in indexed]

    def optimal_order(self) -> list[SocketSpec]:
        """Sockets in the optimal planner's order: priority ascending, power descending, then
        name — so equal sockets tie-break by name, whatever order the list comes in (the
        reference planner keeps the original's config order, `ordered_sockets`)."""
        return sorted(self.sockets, key=lambda s: (s.priority, -s.max_power_usage, s.name))

    def steps_needed(self, socket: SocketSpec) -> int:
        """Steps of full power a socket needs to be full (the original's rule, never negative).

        ceil((capacity - 10 % of one step's energy - stored) / (power x step)).
        """
        step_wh = socket.max_power_usage * self.dt_h
        missing = socket.energy_capacity - FULL_MARGIN * step_wh - socket.energy_stored
        if missing <= 0:
            return 0
        return math.ceil(missing / step_wh - 1e-9)


PlanStatus = Literal["optimal", "time-limited", "fallback", "heuristic"]


class Plan(_Model):
    """A plan: 0/1 per socket per step, and the batteries' planned power (W, + charging)."""

    sockets: dict[str, list[int]]
    battery_power_w: list[float]
    planner: str
    solve_s: float
    status: PlanStatus = "heuristic"
    #: Free-form figures a planner reports (objective, gap, ...).
    info: dict[str, float | int | str] = {}
    #: The batteries' mode per step (absent: `zero` throughout).
    battery_mode: list[BatteryMode] | None = None


class ProblemError(ValueError):
    """A planning problem that cannot be read: one line naming the field and the problem."""


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(document)"


def describe_validation_error(err: ValidationError) -> str:
    """First error of a pydantic ValidationError as `field: problem` (one line)."""
    first = err.errors(include_url=False)[0]
    where = _loc(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    more = err.error_count() - 1
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"{where}: {msg}{suffix}"


def parse_problem(text: str | bytes) -> PlanningProblem:
    """Parse and validate a problem JSON document strictly (no type coercion).

    Raises ProblemError with one line naming the field and the problem.
    """
    try:
        return PlanningProblem.model_validate_json(text, strict=True)
    except ValidationError as err:
        raise ProblemError(describe_validation_error(err)) from None
