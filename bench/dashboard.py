"""How fast the dashboard renders its page, and how large it is.

    python -m bench.dashboard [--repeat N]

A busy day: 96 planning steps, 5 sockets, a battery, prices, a full day of measured history
(one bucket a minute) and each socket switched 40 times: the time to render every section
(what the service does at most once per `push_interval_s`), and the bytes one full update
sends (raw and gzip-compressed, as a proxy would).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.dashboard.render import render_sections
from services.dashboard.state import LiveState
from shared.config import DevicesConfig
from shared.daytime import day_start
from shared.messages import (
    DeviceMeasurement,
    HouseSurplus,
    PlanMessage,
    Prices,
    SocketPlan,
    SocketState,
    dump_message,
)
from shared.naming import slugify
from shared.topics import Topics

TZ = ZoneInfo("Europe/Amsterdam")
NAMES = ["Kitchen boiler", "Shower boiler", "E-bike charger", "Pool pump", "Dish washer"]


def busy_state() -> tuple[LiveState, datetime]:
    devices = DevicesConfig.model_validate(
        {
            "devices": [
                {"device_name": "P1 meter", "device_type": "HWE-P1", "ip_address": "192.0.2.1"},
                *(
                    {
                        "device_name": n,
                        "device_type": "HWE-SKT",
                        "ip_address": f"192.0.2.{10 + i}",
                        "max_power_usage": 1000,
                        "energy_capacity": 3000,
                    }
                    for i, n in enumerate(NAMES)
                ),
                {
                    "device_name": "Battery",
                    "device_type": "HWE-BAT",
                    "ip_address": "192.0.2.30",
                    "max_power_usage": 800,
                    "energy_capacity": 2700,
                    "user_info": {"name": "local/hwsched", "token": "0" * 32},
                },
            ]
        }
    )
    start = day_start(
        datetime(2026, 6, 21, 12, tzinfo=UTC), TZ, datetime.min.time().replace(hour=6)
    )
    now = start + timedelta(hours=23, minutes=50)  # the end of the day: all history in
    state = LiveState(
        Topics("hwsched"), TZ, datetime.min.time().replace(hour=6), now, devices=devices
    )
    base = "hwsched"
    for minute in range(0, 24 * 60 - 10):
        at = start + timedelta(minutes=minute)
        watts = 2000.0 * max(0.0, 1 - abs(minute - 420) / 420) - 300
        surplus = HouseSurplus(
            timestamp=at, surplus_w=watts, p1_power_w=-watts, based_on=["P1 meter"]
        )
        state.ingest(f"{base}/surplus", dump_message(surplus), now)
        battery = DeviceMeasurement(
            timestamp=at,
            device="Battery",
            device_type="HWE-BAT",
            power_w=0.0,
            state_of_charge_pct=50.0 + 40 * (minute % 300) / 300,
            api="v2",
        )
        state.ingest(f"{base}/battery/measurement", dump_message(battery), now)
    for i, name in enumerate(NAMES):
        for k in range(80):
            at = start + timedelta(minutes=15 * k + i)
            message = SocketState(
                timestamp=at,
                socket=name,
                power_on=k % 2 == 0,
                controlled_by=("plan", "override", "manual", "fallback")[k % 8 // 2],
            )
            state.ingest(f"{base}/{slugify(name)}", dump_message(message), now)
    n = 96
    plan = PlanMessage(
        timestamp=now,
        made_at=now,
        start=start,
        step_s=900,
        sockets={
            name: SocketPlan(
                states=[(j // (3 + i)) % 2 for j in range(n)],
                energy_wh=[250.0] * n,
            )
            for i, name in enumerate(NAMES)
        },
        battery_power_w=[0.0] * n,
        battery_energy_wh=[1000.0 + 10 * j for j in range(n)],
        battery_mode=["zero", "charge_only", "discharge_only", "standby"] * (n // 4),
        planner="optimal",
        status="optimal",
        solve_s=0.1,
        available_power_w=[1500.0] * n,
        forecast_power_w=[1800.0] * n,
    )
    state.ingest(f"{base}/plan", dump_message(plan), now)
    prices = Prices(
        timestamp=start,
        start=start,
        step_s=900,
        import_eur_kwh=[0.2 + 0.001 * j for j in range(n)],
        export_eur_kwh=[0.05 - 0.001 * j for j in range(n)],
        source="energyzero",
        made_at=start,
    )
    state.ingest(f"{base}/prices", dump_message(prices), now)
    return state, now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    state, now = busy_state()
    times = []
    sections: dict[str, str] = {}
    for _ in range(args.repeat):
        began = time.perf_counter()
        sections = render_sections(state, now, connected=True)
        times.append((time.perf_counter() - began) * 1000)
    update = json.dumps({"sections": sections}).encode()
    print(
        f"render, every section: median {statistics.median(times):.1f} ms, "
        f"max {max(times):.1f} ms ({args.repeat} renders)"
    )
    for name, html in sections.items():
        print(f"  {name}: {len(html.encode()) / 1024:.1f} kB")
    print(
        f"one full update: {len(update) / 1024:.1f} kB, "
        f"{len(gzip.compress(update)) / 1024:.1f} kB gzip-compressed"
    )


if __name__ == "__main__":
    main()
