"""The dashboard in a real browser: Debian's chromium, headless, driven by Selenium.

`hwsched run` (the whole process stack on the simulated house, on a 10x clock, its own
broker on a free port, the dashboard on a free port with the password the stack made for
the run) is started as a subprocess; then, as a person would:

* the page loads with no error in the browser's console;
* its timeline shows the plan the broker holds (the current plan's on-blocks per socket,
  compared with the retained `<base>/plan` of the same `made_at`);
* without a login every button is disabled and the API refuses a button (401);
* after logging in, "On for 1 h" switches the simulated socket on (the house's own control
  endpoint says so) and the page shows the socket under an override; "Back to plan" ends the
  override (the retained override state is `auto` again and the page says `plan`).

Skipped only when chromium or chromedriver is not installed, and then loudly (a warning and
the skip reason in pytest's summary): `.ci/run` installs both (`apt-get install chromium
chromium-driver`), so CI always runs it. `DASHBOARD_SCREENSHOT=path.png` keeps a screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from services.dashboard.state import on_blocks
from services.stack import BROKER_ENV, STACK_FILE, mosquitto_path
from shared.config import Settings
from shared.daytime import day_bounds
from shared.messages import OverrideState, PlanMessage, parse_message

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next(
    (p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None
)
CHROMEDRIVER = next(
    (p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and Path(p).exists()),
    None,
)
#: From `hwsched run` until the page shows a plan (a loaded 2-core machine).
READY_S = 120.0
#: From a button until the house (or the page) shows what it did; the 5-min switch interval
#: is 30 s on the 10x clock, and the actuator may just have switched at its start.
ACT_S = 120.0
SPEED = 10.0
START = "2026-06-21T10:00:00+02:00"


def _require_browser() -> None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        missing = " and ".join(
            n for n, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if p is None
        )
        message = (
            f"!!! THE DASHBOARD'S BROWSER TEST DID NOT RUN: {missing} not installed "
            "(apt-get install chromium chromium-driver; .ci/run installs them) !!!"
        )
        warnings.warn(message, stacklevel=2)
        print(message, file=sys.stderr)
        pytest.skip(message)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`hwsched run` on the simulated house; yields its stack.json once the dashboard is up."""
    _require_browser()
    run_dir = tmp_path / "run"
    out = tmp_path / "stack.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HWSCHED_")}
    env |= {
        BROKER_ENV: "mosquitto" if mosquitto_path() else "embedded",
        "PYTHONUNBUFFERED": "1",
        "HWSCHED_DASHBOARD__PORT": str(_free_port()),
        "STACK_TEST_MARK": uuid.uuid4().hex,
    }
    argv = [sys.executable, "-m", "services.cli", "run", "--run-dir", str(run_dir)]
    argv += ["--speed", str(SPEED), "--start", START]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        info = _wait_for_dashboard(run_dir / STACK_FILE, proc, out)
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = (run_dir / "dashboard.log").read_text(errors="replace")
    assert "Traceback" not in log, log


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_dashboard(path: Path, proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_S
    while True:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_text())
            url = (info.get("dashboard") or {}).get("url")
            if info.get("state") == "running" and url:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "healthz", timeout=2).status_code == 200:
                        return dict(info)
        if proc.poll() is not None:
            pytest.fail(f"hwsched run exited ({proc.returncode}):\n{out.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no dashboard after {READY_S:.0f} s:\n{out.read_text()}")
        time.sleep(0.2)


def _retained(info: dict[str, Any], topic: str) -> bytes | None:
    """The retained message on `topic` now (None when there is none)."""

    async def read() -> bytes | None:
        port = info["broker"]["port"]
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"t-{uuid.uuid4().hex[:8]}") as c:
            await c.subscribe(topic, qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    async for message in c.messages:
                        return bytes(message.payload)  # type: ignore[arg-type]
        return None

    return asyncio.run(read())


def _browser(tmp_path: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1600",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _until(what: str, check: Any, timeout: float, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = check()
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def _console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


PAGE_PLAN = """
const svg = document.querySelector('#sec-timeline svg.timeline');
if (!svg || !svg.dataset.planMadeAt) return null;
return {
  made_at: svg.dataset.planMadeAt,
  day_start: svg.dataset.dayStart,
  blocks: Array.from(svg.querySelectorAll('rect.planned.current[data-socket]')).map(
    (r) => [r.dataset.socket, r.dataset.start, r.dataset.end]),
};
"""


def _plan_blocks(plan: PlanMessage, start: datetime, end: datetime) -> set[tuple[str, str, str]]:
    from shared.naming import slugify

    out = set()
    for name, row in plan.sockets.items():
        for a, b in on_blocks(plan.start, plan.step_s, row.states):
            if b <= start or a >= end:
                continue
            out.add((slugify(name), max(a, start).isoformat(), min(b, end).isoformat()))
    return out


def _socket_card(driver: Any, slug: str) -> dict[str, str]:
    return dict(
        driver.execute_script(
            "const a = document.getElementById('socket-' + arguments[0]);"
            "return a ? {by: a.dataset.controlledBy, on: a.dataset.powerOn, text: a.innerText}"
            " : {};",
            slug,
        )
    )


def _simulated_socket(info: dict[str, Any], name: str) -> dict[str, Any]:
    state = httpx.get(info["simulator"]["control_url"] + "/state", timeout=5).json()
    return dict(state["house"]["sockets"][name])


def test_the_dashboard_in_chromium(stack: dict[str, Any], tmp_path: Path) -> None:
    info = stack
    url = info["dashboard"]["url"]
    password = Path(info["dashboard"]["password_file"]).read_text().strip()
    base = info["base_topic"]
    driver = _browser(tmp_path)
    try:
        # --- the page loads, live, without console errors ---------------------------------
        driver.get(url)
        _until(
            "the page shows the sockets and a plan",
            lambda: (
                driver.execute_script(PAGE_PLAN)
                and driver.find_elements("css selector", "#sec-sockets article.socket")
            ),
            READY_S,
        )
        assert driver.title == "hwsched"
        assert _console_errors(driver) == []

        # --- the timeline is the plan the broker holds ------------------------------------
        settings = Settings()
        compared = 0
        seen: list[tuple[str, str]] = []
        # A plan every poll (3 s of real time at 10x): the page and the broker are compared
        # when they hold the same one, for as long as a busy machine needs to line them up
        # and to make the first plan on the forecast (quartz's start takes a while: before
        # it the fallback rule may plan nothing on).
        deadline = time.monotonic() + 2 * READY_S
        while time.monotonic() < deadline:
            plan = parse_message(PlanMessage, _retained(info, f"{base}/plan") or b"")
            page = driver.execute_script(PAGE_PLAN)
            if page["made_at"] != plan.made_at.isoformat():
                seen.append((page["made_at"], plan.made_at.isoformat()))
                time.sleep(0.3)  # a newer plan on its way to the page (or the broker)
                continue
            start, end = day_bounds(plan.made_at, settings.tz, settings.daily_boundary)
            assert page["day_start"] == start.isoformat()
            shown = {tuple(b) for b in page["blocks"]}
            assert shown == _plan_blocks(plan, start, end)
            compared += 1
            if shown:
                break
            time.sleep(0.5)
        assert compared, f"the page never showed the broker's current plan: {seen[-5:]}"
        assert shown, "the broker's plan (as the page shows it) has no socket on all day"

        # --- no login: buttons disabled, the API refuses ----------------------------------
        buttons = driver.find_elements("css selector", "button[data-action]")
        assert buttons
        assert all(not b.is_enabled() for b in buttons)
        refused = httpx.post(
            url + "api/sockets/e_bike_charger/override",
            json={"action": "on_1h"},
            headers={"Origin": url.rstrip("/")},
        )
        assert refused.status_code == 401, refused.text
        assert "log in" in refused.json()["error"]

        # --- log in ---------------------------------------------------------------------
        driver.find_element("id", "password").send_keys(password)
        driver.find_element("id", "login-button").click()
        _until("logged in", lambda: driver.find_element("id", "logout").is_displayed(), 10)
        cookie = driver.get_cookie("hwsched_session")
        assert cookie is not None
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert password not in driver.page_source

        # --- "On for 1 h" on a socket that is off: the house switches it on --------------
        house = httpx.get(info["simulator"]["control_url"] + "/state", timeout=5).json()
        off = [n for n, s in house["house"]["sockets"].items() if not s["power_on"]]
        name = "E-bike charger" if "E-bike charger" in off else (off or ["E-bike charger"])[0]
        slug = name.lower().replace(" ", "_").replace("-", "_")
        button = _until(
            "the on-for-1-h button is enabled",
            lambda: next(
                b
                for b in driver.find_elements(
                    "css selector", f'button[data-socket="{slug}"][data-action="on_1h"]'
                )
                if b.is_enabled()
            ),
            10,
        )
        button.click()
        _until(
            "the page says the override was sent",
            lambda: "Sent: on for 1 h" in driver.find_element("id", "message").text,
            10,
        )
        _until(
            f"the simulated {name} is on",
            lambda: _simulated_socket(info, name)["power_on"],
            ACT_S,
        )
        card = _until(
            "the page shows the socket on, under an override",
            lambda: (
                (c := _socket_card(driver, slug))
                and c.get("by") == "override"
                and c.get("on") == "true"
                and c
            ),
            ACT_S,
        )
        assert "Override" in card["text"]
        override = parse_message(OverrideState, _retained(info, f"{base}/{slug}/override") or b"")
        assert override.state == "on"
        assert override.source == "mqtt"

        # --- "Back to plan" ends it -------------------------------------------------------
        driver.find_element(
            "css selector", f'button[data-socket="{slug}"][data-action="auto"]'
        ).click()
        _until(
            "the override is over on the broker",
            lambda: (
                parse_message(
                    OverrideState, _retained(info, f"{base}/{slug}/override") or b""
                ).state
                == "auto"
            ),
            ACT_S,
        )
        _until(
            "the page shows the socket back under the plan",
            lambda: _socket_card(driver, slug).get("by") in ("plan", "fallback"),
            ACT_S,
        )
        assert "Override" not in _socket_card(driver, slug)["text"]
        assert _console_errors(driver) == []
        shot = os.environ.get("DASHBOARD_SCREENSHOT")
        driver.save_screenshot(shot or str(tmp_path / "dashboard.png"))
    finally:
        driver.quit()
