"""The Docker deployment, checked without a Docker engine.

* compose.yaml and compose.sim.yaml against the Compose specification (check-jsonschema's
  vendored schema); every `HWSCHED_*` variable they, .env.example or a Dockerfile set is a
  settings field, and each service's environment loads as settings;
* compose.sim.yaml (the services on the simulated house) against the simulator's command in
  compose.yaml: the same host name, ports and state directory, the `sim` volume read-only in
  every service, and the files a simulator started with that command writes load as the
  services' devices file and CA;
* docker/Dockerfile (every service's image: build argument SERVICE) and the stand-ins' pass
  hadolint; multi-stage, the base an argument whose default is the pinned official image,
  non-root, a HEALTHCHECK, nothing of one service in it; each compose service's image runs
  `services.<SERVICE>` (docker/service.py), and the lock it installs covers every import of
  its service;
* the broker: the shipped mosquitto.conf started with the real `mosquitto` binary (only the
  listener's port and the /mosquitto/... paths are changed, to a free 127.0.0.1 port and a
  temporary directory), with the password file and ACL that mosquitto/broker_setup.py makes:
  anonymous and wrong-password clients are refused, and each user can publish exactly the
  topics the registry (shared.topics.TOPICS) gives it (checked by a subscriber: a forbidden
  message never arrives);
* docker/healthcheck.py against that broker.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel
from ruamel.yaml import YAML

from services.forecaster.settings import ENV_PREFIX as FORECAST_ENV_PREFIX
from services.forecaster.settings import ForecastSettings
from shared.config import ENV_NESTED_DELIMITER, ENV_PREFIX, SETTINGS_FILE_ENV, Settings
from shared.topics import TOPICS, TopicSpec

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
COMPOSE_SIM = ROOT / "compose.sim.yaml"
COMPOSE_FILES = (COMPOSE, COMPOSE_SIM)
ENV_EXAMPLE = ROOT / ".env.example"
MOSQUITTO_CONF = ROOT / "mosquitto" / "mosquitto.conf"
EXAMPLE_DEVICES = ROOT / "config" / "config_devices.example.json"
BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")
BROKER_IMAGE = re.compile(r"^\$\{MOSQUITTO_IMAGE:-eclipse-mosquitto:2\.0\.\d+\}$")
DOCKERFILE = ROOT / "docker" / "Dockerfile"
#: The Dockerfile's stages that are images (compose `target`s).
IMAGE_TARGETS = ("service", "forecaster")
#: The images' own paths that are not the repository's.
LOCAL = ("shared", "services")


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


broker_setup = _load("hwsched_broker_setup", ROOT / "mosquitto" / "broker_setup.py")
healthcheck = _load("hwsched_healthcheck", ROOT / "docker" / "healthcheck.py")
service_entry = _load("hwsched_service_entry", ROOT / "docker" / "service.py")


def _tool(name: str) -> str:
    """A console script of this venv (hadolint, check-jsonschema)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -r requirements/dev.lock"
    return found


def _yaml(path: Path) -> dict[str, Any]:
    data = YAML(typ="safe").load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


@pytest.fixture(scope="module")
def compose_sim() -> dict[str, Any]:
    return _yaml(COMPOSE_SIM)


def env_example() -> dict[str, str]:
    return dict(broker_setup.read_env_file(ENV_EXAMPLE))


def hwsched_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services whose image is docker/Dockerfile's for themselves (SERVICE = their
    name; not broker-setup, which runs the poller's image)."""
    out = {}
    for name, svc in compose["services"].items():
        build = svc.get("build", {})
        if build.get("dockerfile") == "docker/Dockerfile" and build_args(svc)["SERVICE"] == name:
            out[name] = svc
    return out


def build_args(svc: dict[str, Any]) -> dict[str, str]:
    """A service's build arguments as compose passes them (defaults of .env.example)."""
    example = env_example()
    return {k: interpolate(str(v), example) for k, v in svc["build"].get("args", {}).items()}


def image_env(svc: dict[str, Any]) -> dict[str, str]:
    """The environment docker/Dockerfile gives the service's image (its target stage)."""
    return dockerfile_env(DOCKERFILE, svc["build"]["target"], build_args(svc))


# --- compose.yaml ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_matches_the_compose_specification(path: Path) -> None:
    done = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_catches_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text(COMPOSE.read_text().replace("restart: unless-stopped", "restart: 5", 1))
    done = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0


def test_compose_has_every_service_with_restart_healthcheck_and_bounded_logs(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    mains = sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))
    assert sorted(hwsched_services(compose)) == mains
    assert services["simulator"]["profiles"] == ["sim"]
    assert BROKER_IMAGE.match(services["mosquitto"]["image"])
    assert interpolate(services["mosquitto"]["image"], {}) == env_example()["MOSQUITTO_IMAGE"]
    for name, svc in services.items():
        logging = svc["logging"]
        assert logging["driver"] == "json-file", name
        assert logging["options"]["max-size"], name
        assert logging["options"]["max-file"], name
        if name != "broker-setup":
            assert svc["restart"] == "unless-stopped", name
    for name, svc in hwsched_services(compose).items():
        # the image's HEALTHCHECK is used (its timing may be tuned, its test not replaced
        # nor switched off), config is mounted read-only
        assert not {"test", "disable"} & set(svc.get("healthcheck", {})), name
        assert "./config:/app/config:ro" in svc["volumes"], name
        assert svc["image"].startswith(f"hwsched/{name}:"), name
        assert svc["build"]["context"] == "."
        assert svc["build"]["target"] in IMAGE_TARGETS, name
        # no container runs as root: the images' users, and compose's own where it sets one
        assert svc.get("user", "10001").split(":")[0] not in ("0", "root"), name
    for name in ("mosquitto", "broker-setup"):
        assert services[name]["user"] == "1883:1883", name  # the broker's user, not root
    # the broker image's /mosquitto/log: a tmpfs, never an anonymous volume left by `down`
    assert "/mosquitto/log" in services["mosquitto"]["tmpfs"]
    broker = services["mosquitto"]
    assert "test" in broker["healthcheck"]
    assert any(v.endswith(":/mosquitto/data") for v in broker["volumes"])
    assert broker["depends_on"]["broker-setup"]["condition"] == "service_completed_successfully"


def test_no_secret_is_written_into_compose(
    compose: dict[str, Any], compose_sim: dict[str, Any]
) -> None:
    for name, svc in [*compose["services"].items(), *compose_sim["services"].items()]:
        for key, value in (svc.get("environment") or {}).items():
            if "PASSWORD" in key and value:
                assert re.fullmatch(
                    r"\$\{(MQTT_[A-Z]+|DASHBOARD)_PASSWORD(:\?[^}]*|:-)?\}", value
                ), f"{name}: {key} must come from .env, not be written here"


def test_each_service_has_its_own_broker_user(compose: dict[str, Any]) -> None:
    users = set(broker_setup.SERVICE_USERS)
    example = env_example()
    setup_env = compose["services"]["broker-setup"]["environment"]
    for name, svc in hwsched_services(compose).items():
        env = svc.get("environment") or {}
        if name == "simulator":
            assert not any(k.startswith("HWSCHED_BROKER") for k in env)
            continue
        assert env["HWSCHED_BROKER__USERNAME"] == name
        assert name in users
        var = broker_setup.password_env(name)
        assert env["HWSCHED_BROKER__PASSWORD"].startswith("${" + var)
        assert var in example
        assert var in setup_env
    assert users <= set(hwsched_services(compose))


_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` (and `$$`) from `env`."""

    def one(found: re.Match[str]) -> str:
        name, op, arg = found.groups()
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op in (":?", "?"):
            raise AssertionError(f"${{{name}}} is required and not in .env.example")
        return arg or ""

    return _REF.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def _settings_field(parts: list[str], model: type[BaseModel]) -> bool:
    field = model.model_fields.get(parts[0].lower())
    if field is None:
        return False
    if len(parts) == 1:
        return True
    sub = field.annotation
    return isinstance(sub, type) and issubclass(sub, BaseModel) and _settings_field(parts[1:], sub)


def is_setting(var: str) -> bool:
    """Whether `var` is read by the settings: shared's `Settings` or the forecaster's own."""
    if var == SETTINGS_FILE_ENV:
        return True
    if var.startswith(FORECAST_ENV_PREFIX):
        return var[len(FORECAST_ENV_PREFIX) :].lower() in ForecastSettings.model_fields
    rest = var[len(ENV_PREFIX) :]
    return bool(rest) and _settings_field(rest.split(ENV_NESTED_DELIMITER), Settings)


def dockerfile_stages(path: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (what it is FROM, its instructions)."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] = []
    for instr, args in dockerfile_instructions(path):
        if instr == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = []
            stages[name] = (words[0], current)
        elif stages:
            current.append((instr, args))
    return stages


def dockerfile_env(path: Path, target: str, args: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `target`'s image has: ENV of its stage and the stages it is FROM
    (`${ARG}` of the build arguments given; unknown ones stay as they are)."""
    stages = dockerfile_stages(path)
    chain = [target]
    while stages[chain[-1]][0] in stages:
        chain.append(stages[chain[-1]][0])
    out: dict[str, str] = {}
    for stage in reversed(chain):
        for instr, text in stages[stage][1]:
            if instr == "ENV":
                for key, value in re.findall(r"(\w+)=(\S+)", text):
                    out[key] = re.sub(
                        r"\$\{(\w+)\}", lambda m: (args or {}).get(m.group(1), m.group(0)), value
                    )
    return out


def test_every_hwsched_variable_is_a_setting(compose: dict[str, Any]) -> None:
    names: set[str] = set()
    for path in COMPOSE_FILES:
        names |= set(re.findall(r"\b(HWSCHED_[A-Z0-9_]+)", path.read_text()))
    names |= {k for k in env_example() if k.startswith(ENV_PREFIX)}
    for target in IMAGE_TARGETS:
        names |= {k for k in dockerfile_env(DOCKERFILE, target) if k.startswith(ENV_PREFIX)}
    assert names, "no HWSCHED_ variable found"
    assert {n for n in names if not is_setting(n)} == set()
    # the check itself knows a wrong one when it sees it
    assert not is_setting("HWSCHED_BROKER__HOSTNAME")
    assert not is_setting("HWSCHED_BROKER__HOST__X")
    assert not is_setting("HWSCHED_FORECAST__WEATHER")
    assert is_setting("HWSCHED_BROKER__HOST")
    assert is_setting("HWSCHED_FORECAST__WORKER_PYTHON")


def test_every_service_environment_loads_as_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    example = env_example()
    monkeypatch.chdir(tmp_path)  # no config/settings.toml: defaults + environment only
    for var in list(os.environ):
        if var.startswith(ENV_PREFIX):
            monkeypatch.delenv(var)
    for name, svc in compose["services"].items():
        env = {k: interpolate(str(v), example) for k, v in (svc.get("environment") or {}).items()}
        if name in hwsched_services(compose):
            env = {**{k: v for k, v in image_env(svc).items() if k.startswith(ENV_PREFIX)}, **env}
        hwsched = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        for key, value in hwsched.items():
            monkeypatch.setenv(key, value)
        try:
            settings = Settings()
            if any(k.startswith(FORECAST_ENV_PREFIX) for k in hwsched):
                ForecastSettings()
            if name != "broker-setup" and "HWSCHED_BROKER__HOST" in hwsched:
                assert settings.broker.host == "mosquitto"
                assert settings.broker.username == name
                assert settings.broker.password is not None
        finally:
            for key in hwsched:
                monkeypatch.delenv(key)


def test_every_compose_variable_is_in_the_env_example() -> None:
    used = {m.group(1) for path in COMPOSE_FILES for m in _REF.finditer(path.read_text())}
    assert used - set(env_example()) == set()


# --- compose.sim.yaml: the services on the simulated house ----------------------------------


def simulator_command(compose: dict[str, Any]) -> Any:
    """The simulator's command in compose.yaml, parsed by the simulator's own parser."""
    import argparse

    from services.simulator.main import add_arguments

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    command = compose["services"]["simulator"]["command"]
    assert all(isinstance(a, str) for a in command), "quote the numbers: argv is strings"
    return parser.parse_args(command)


def overlay_env(compose: dict[str, Any], compose_sim: dict[str, Any], name: str) -> dict[str, str]:
    """A service's environment as `docker compose -f compose.yaml -f compose.sim.yaml` gives
    it: the image's HWSCHED_* variables, then compose.yaml's, then the overlay's."""
    example = env_example()
    image = image_env(compose["services"][name])
    env = {k: v for k, v in image.items() if k.startswith(ENV_PREFIX)}
    for data in (compose, compose_sim):
        svc_env = data["services"].get(name, {}).get("environment") or {}
        env |= {k: interpolate(str(v), example) for k, v in svc_env.items()}
    return env


def test_the_simulated_house_overlay_matches_the_simulators_command(
    compose: dict[str, Any], compose_sim: dict[str, Any]
) -> None:
    from services.simulator.server import DEVICES_FILE
    from services.simulator.tls import CA_CERT_FILE

    simulator = compose["services"]["simulator"]
    assert simulator["profiles"] == ["sim"]
    args = simulator_command(compose)
    assert args.bind == "0.0.0.0"  # reachable from the other containers
    assert args.advertise_host == "simulator"  # the service name: what the others resolve
    assert args.config == "config/config_devices.json"  # the devices broker-setup reads
    assert args.weather_port is not None
    assert args.control_port is not None
    assert args.base_port is not None  # device ports stay the same across restarts
    state = args.state_dir
    assert f"sim:{state}" in simulator["volumes"]  # read-write for the simulator
    assert "sim" in compose["volumes"]
    overlay = compose_sim["services"]
    assert set(overlay) == set(hwsched_services(compose)) - {"simulator"}
    for name, svc in overlay.items():
        assert svc["depends_on"] == {"simulator": {"condition": "service_healthy"}}, name
        assert svc["volumes"] == [f"sim:{state}:ro"], name
        assert "profiles" not in svc, name
        env = overlay_env(compose, compose_sim, name)
        assert env["HWSCHED_DEVICES_FILE"] == f"{state}/{DEVICES_FILE}", name
        assert env["HWSCHED_DEVICE_CA_FILE"] == f"{state}/{CA_CERT_FILE}", name
        # compose.yaml's own environment is kept (the overlay adds, it does not replace)
        assert env["HWSCHED_BROKER__USERNAME"] == name
    weather = overlay_env(compose, compose_sim, "forecaster")["HWSCHED_FORECAST__WEATHER_URL"]
    assert weather == f"http://{args.advertise_host}:{args.weather_port}"
    # the simulator's fixed ports are clear of the devices' (from --base-port, one or two
    # each) for a house of up to 40 devices
    fixed = {args.weather_port, args.control_port}
    assert not fixed & set(range(args.base_port, args.base_port + 80))


def test_the_services_load_what_the_simulator_writes(
    compose: dict[str, Any],
    compose_sim: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A simulator started with compose's options (ports and listen address aside: this
    machine's loopback and free ports) writes files that load as every service's settings,
    devices file and CA, with every device at the simulator's service name."""
    import asyncio

    from services.simulator.server import Simulator
    from services.simulator.settings import SimulatorSettings
    from shared.clock import ManualClock
    from shared.config import load_devices

    args = simulator_command(compose)
    state = tmp_path / "sim"

    async def write_files() -> None:
        sim = Simulator(
            load_devices(EXAMPLE_DEVICES),  # config_devices.json is the user's: its example
            clock=ManualClock(datetime(2024, 6, 21, 10, tzinfo=UTC)),
            settings=SimulatorSettings(),
            state_dir=state,
            bind="127.0.0.1",
            advertise_host=args.advertise_host,
        )
        async with sim:
            pass

    asyncio.run(write_files())
    monkeypatch.chdir(tmp_path)  # no config/settings.toml: defaults + environment only
    for var in list(os.environ):
        if var.startswith(ENV_PREFIX):
            monkeypatch.delenv(var)
    for name in compose_sim["services"]:
        env = overlay_env(compose, compose_sim, name)
        with monkeypatch.context() as mp:
            for key, value in env.items():
                # the volume's mount point, here: the temporary state directory
                local = value
                if value.startswith(args.state_dir + "/"):
                    local = str(state) + value[len(args.state_dir) :]
                mp.setenv(key, local)
            settings = Settings()
            assert settings.device_ca_file == state / "ca.pem", name
            devices = load_devices(settings.devices_file)
            assert {d.ip_address for d in devices.devices} == {"simulator"}, name
            assert len(devices.devices) == len(load_devices(EXAMPLE_DEVICES).devices)
            if name == "forecaster":
                assert ForecastSettings().weather_url == f"http://simulator:{args.weather_port}"


def test_dockerignore_keeps_secrets_and_config_out_of_images() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # an allow-list: nothing enters the build context unless named
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for secret in ("config", ".env", "mosquitto", ".git", ".venv", "tests"):
        assert not any(a == secret or a.startswith(secret + "/") for a in allowed), secret


# --- Dockerfiles ----------------------------------------------------------------------------


def dockerfiles() -> list[Path]:
    """docker/Dockerfile (every service) and the stand-in base images' recipes."""
    return [DOCKERFILE, *sorted((ROOT / "docker" / "standins").glob("*.Dockerfile"))]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        instr, _, args = current.partition(" ")
        out.append((instr.upper(), args.strip()))
        current = ""
    return out


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_hadolint(path: Path) -> None:
    done = subprocess.run(
        [_tool("hadolint"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_is_slim_multistage_pinned_and_non_root() -> None:
    instructions = dockerfile_instructions(DOCKERFILE)
    # the base: an argument, by default the official image pinned by exact tag
    first = instructions[0]
    assert first[0] == "ARG"
    name, _, default = first[1].partition("=")
    assert name == "PYTHON_IMAGE"
    assert BASE_IMAGE.match(default), default
    stages = dockerfile_stages(DOCKERFILE)
    for stage, (base, _) in stages.items():
        assert base == "${PYTHON_IMAGE}" or base in stages, f"{stage} is FROM {base}"
    assert list(stages)[-len(IMAGE_TARGETS) - 1 :] == ["service", "island", "forecaster"], (
        "the legacy builder builds every stage before its target: the forecaster's last"
    )
    for target in IMAGE_TARGETS:
        chain = [target]
        while stages[chain[-1]][0] in stages:
            chain.append(stages[chain[-1]][0])
        assert "build" not in chain, f"{target} carries the build stage"
        inherited = [i for stage in reversed(chain) for i in stages[stage][1]]
        users = [args for instr, args in inherited if instr == "USER"]
        assert users, f"{target}: no USER"
        assert users[-1].split(":")[0] not in ("0", "root"), "runs as a user without rights"
        assert any(instr == "HEALTHCHECK" for instr, _ in inherited), target
        entry = [json.loads(args) for instr, args in inherited if instr == "ENTRYPOINT"]
        assert entry[-1] == ["python", "/app/service.py"], entry
        # the build-time CA and index never reach an image
        words = " ".join(args for _, args in inherited)
        assert "EXTRA_CA_CERTS" not in words
        assert "INDEX_URL" not in words
        assert "PIP_CONFIG_FILE" not in words
    copies = " ".join(args for instr, args in instructions if instr in ("COPY", "ADD"))
    assert "config" not in copies.split()
    assert ".env" not in copies


def test_the_dockerfile_names_no_service_but_the_forecaster() -> None:
    """One Dockerfile for all: a new service needs nothing here (its compose entry and lock)."""
    services = {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")}
    text = " ".join(f"{i} {a}" for i, a in dockerfile_instructions(DOCKERFILE))
    named = {s for s in services if re.search(rf"\b{s}\b", text)}
    assert named == {"forecaster"}  # its island: a stage of its own


def test_every_service_image_runs_its_service(compose: dict[str, Any]) -> None:
    """docker/service.py: SERVICE names the package; every module of it imports (the build's
    check); and it runs `services.<SERVICE>`'s __main__ as `python -m` would."""
    for name in hwsched_services(compose):
        modules = service_entry.check(name)
        assert f"services.{name}" in modules
        assert importlib.util.find_spec(f"services.{name}.__main__") is not None
    os.environ.pop("SERVICE", None)
    with pytest.raises(SystemExit, match="SERVICE"):
        service_entry.service_name()


def test_the_service_entry_point_runs_the_package_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "services" / "demo"
    package.mkdir(parents=True)
    (tmp_path / "services" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import sys\nprint('demo ran as', __name__, 'with', sys.argv[1:])\n"
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "service.py"), "--flag", "x"],
        cwd=tmp_path,
        env={**os.environ, "SERVICE": "demo", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "demo ran as __main__ with ['--flag', 'x']"


# --- per-service dependencies ---------------------------------------------------------------


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(*roots: Path | str) -> dict[str, set[str]]:
    """Top-level third-party modules imported by `roots` and every local module they import.

    `roots`: module names (`services.poller.__main__`) or script paths. Imports anywhere in
    a module count (lazy ones inside functions too); the standard library does not.
    """
    found: dict[str, set[str]] = {}
    seen: set[Path] = set()
    todo: list[Path] = []
    for root in roots:
        path = root if isinstance(root, Path) else _module_file(root)
        assert path is not None, root
        todo.append(path)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        package = parts if path.name == "__init__.py" else parts[:-1]
        if package and package[-1] == "__init__":
            package = package[:-1]
        for i in range(1, len(package) + 1):  # parent packages' __init__ run too
            init = _module_file(".".join(package[:i]))
            if init is not None and package[0] in LOCAL:
                todo.append(init)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in LOCAL:
                    local = _module_file(name)
                    if local is not None:
                        todo.append(local)
                elif top and top not in sys.stdlib_module_names and name == names[0]:
                    # `import a.b` names the module; `from a import b` its first entry
                    found.setdefault(top, set()).add(str(rel))
    return found


def read_lock(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def dependencies(dist: str) -> set[str]:
    out: set[str] = set()
    for text in importlib.metadata.distribution(dist).requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.add(canonicalize_name(req.name))
    return out


def image_lock(svc: dict[str, Any]) -> Path:
    """The lock the service's image installs (docker/Dockerfile: LOCK, by default SERVICE)."""
    args = build_args(svc)
    return ROOT / "requirements" / f"{args.get('LOCK', args['SERVICE'])}.lock"


def _declared_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}


def test_image_lock_covers_every_import_of_its_service(compose: dict[str, Any]) -> None:
    for name, svc in hwsched_services(compose).items():
        check_image_lock(name, svc)


def check_image_lock(name: str, svc: dict[str, Any]) -> None:
    lock = image_lock(svc)
    assert lock.name in (f"{name}.lock", f"{name}-service.lock")
    pins = read_lock(lock)
    runtime = read_lock(ROOT / "requirements" / "runtime.lock")
    roots: list[Path | str] = [f"services.{name}.__main__", ROOT / "docker" / "service.py"]
    if "HWSCHED_BROKER__USERNAME" in (svc.get("environment") or {}):
        roots.append(ROOT / "docker" / "healthcheck.py")  # its MQTT check (not the simulator's)
    if name == "poller":  # compose's broker-setup runs the broker setup in the poller image
        roots.append(ROOT / "mosquitto" / "broker_setup.py")
    module_dists = importlib.metadata.packages_distributions()
    missing = {}
    for module, where in third_party_imports(*roots).items():
        dists = {canonicalize_name(d) for d in module_dists.get(module, [])}
        assert dists, f"{module} (imported by {sorted(where)}) is not installed here"
        if not dists & pins.keys():
            missing[module] = sorted(where)
    assert missing == {}, f"{lock.name} lacks the distributions of these imports"
    assert _declared_dependencies() <= pins.keys()  # hwsched itself needs them (pip check)
    for dist in pins:
        assert pins[dist] == runtime.get(dist), f"{dist}: {lock.name} and runtime.lock differ"
        assert dependencies(dist) <= pins.keys(), f"{dist} needs {dependencies(dist) - pins.keys()}"


def test_the_forecaster_island_holds_the_worker_and_quartz() -> None:
    island = read_lock(ROOT / "requirements" / "forecaster.lock")
    assert island.get("quartz-solar-forecast") == "1.2.12"
    module_dists = importlib.metadata.packages_distributions()
    for module in third_party_imports("services.forecaster.worker"):
        dists = {canonicalize_name(d) for d in module_dists.get(module, [])}
        assert dists & island.keys(), f"the worker imports {module}, not in forecaster.lock"
    stages = dockerfile_stages(DOCKERFILE)
    stage = " ".join(f"{i} {a}" for i, a in stages["island"][1])
    assert "ARG ISLAND_LOCK=forecaster" in stage
    assert "requirements/${ISLAND_LOCK}.lock" in stage
    assert "--no-deps" in stage
    env = dockerfile_env(DOCKERFILE, "forecaster")
    assert env["HWSCHED_FORECAST__WORKER_PYTHON"].startswith("/opt/forecaster/")
    assert "HWSCHED_FORECAST__WORKER_PYTHON" not in dockerfile_env(DOCKERFILE, "service")


def test_the_import_scan_sees_lazy_and_relative_imports() -> None:
    found = third_party_imports("services.scheduler.__main__")
    assert "highspy" in found  # imported inside a function of shared.planning.optimal
    assert "aiomqtt" in found  # through shared.service
    assert "aiohttp" not in found  # the simulator's, not the scheduler's


# --- the broker -----------------------------------------------------------------------------

PASSWORDS = {user: f"{user}-pw-{uuid.uuid4().hex[:12]}" for user in broker_setup.SERVICE_USERS}
PASSWORDS[broker_setup.HA_USER] = f"ha-pw-{uuid.uuid4().hex[:12]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if found is None:
        pytest.fail("no mosquitto binary: apt-get install mosquitto (.ci/run does)")
    return found


class Broker:
    def __init__(self, port: int, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.workdir = workdir


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    """The shipped mosquitto.conf, on a free port, with broker_setup's passwd and ACL."""
    # Not under pytest's 0700 temporary root: mosquitto started as root drops to its own user,
    # which must reach the files.
    work = Path(tempfile.mkdtemp(prefix="hwsched-test-deploy-"))
    work.chmod(0o711)
    try:
        yield from _run_broker(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_broker(work: Path) -> Iterator[Broker]:
    auth, data = work / "auth", work / "data"
    data.mkdir()
    env = {broker_setup.password_env(u): pw for u, pw in PASSWORDS.items()}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("HWSCHED_DEVICES_FILE", str(EXAMPLE_DEVICES))
        for var in list(os.environ):
            if var.startswith(ENV_PREFIX) and var != "HWSCHED_DEVICES_FILE":
                mp.delenv(var)
        owner = None
        if os.geteuid() == 0:  # mosquitto started as root reads its files as user mosquitto
            try:
                entry = pwd.getpwnam("mosquitto")
            except KeyError:
                entry = pwd.getpwnam("nobody")
            owner = (entry.pw_uid, entry.pw_gid)
            os.chown(data, *owner)
        broker_setup.setup(auth, env, owner=owner)
    port = _free_port()
    conf = MOSQUITTO_CONF.read_text()
    assert "\nlistener 1883\n" in conf
    conf = conf.replace("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n")
    conf = conf.replace("/mosquitto/auth/", f"{auth}/").replace("/mosquitto/data/", f"{data}/")
    settings = [line for line in conf.splitlines() if not line.startswith("#")]
    assert not any("/mosquitto/" in line for line in settings), "a path left unchanged"
    (work / "mosquitto.conf").write_text(conf)
    log = work / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_mosquitto_binary(), "-c", str(work / "mosquitto.conf")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start with the shipped config:\n{log.read_text()}")
            time.sleep(0.05)
        yield Broker(port, work)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """A paho client in its own thread: connect result, received messages, publish."""

    def __init__(self, broker: Broker, user: str | None, password: str | None) -> None:
        self.connected = threading.Event()
        self.reason: Any = None
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-deploy-{uuid.uuid4().hex[:10]}"
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.reason = reason
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.messages.append((message.topic, bytes(message.payload)))
            self.arrived.notify_all()

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def subscribe(self, topic: str) -> None:
        result, _mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.1)  # the SUBACK; the broker then delivers in order

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def wait_for(self, payload: bytes, timeout: float = 5.0) -> None:
        with self.arrived:
            ok = self.arrived.wait_for(lambda: any(p == payload for _, p in self.messages), timeout)
        assert ok, f"{payload!r} never arrived"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def client(broker: Broker, user: str | None, password: str | None) -> Iterator[Client]:
    c = Client(broker, user, password)
    try:
        yield c
    finally:
        c.close()


def test_the_shipped_config_has_persistence_and_no_anonymous_access() -> None:
    lines = {
        line.split()[0]: line.split(None, 1)[1]
        for line in MOSQUITTO_CONF.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert lines["allow_anonymous"] == "false"
    assert lines["persistence"] == "true"
    assert lines["persistence_location"] == "/mosquitto/data/"
    assert lines["password_file"].startswith("/mosquitto/auth/")
    assert lines["acl_file"].startswith("/mosquitto/auth/")


def test_anonymous_clients_are_refused(broker: Broker) -> None:
    with client(broker, None, None) as anonymous:
        assert not anonymous.accepted


def test_a_wrong_password_is_refused(broker: Broker) -> None:
    with client(broker, "ha", "not-the-password") as wrong:
        assert not wrong.accepted
    with client(broker, "nobody-here", PASSWORDS["ha"]) as unknown:
        assert not unknown.accepted
    with client(broker, "ha", PASSWORDS["ha"]) as right:
        assert right.accepted


def _topic(spec: TopicSpec, own: str) -> str:
    params = {"device": "p1_meter", "socket": "kitchen_boiler", "service": own}
    return spec.build("hwsched", **{p: params[p] for p in spec.params})


def test_each_user_publishes_exactly_its_own_topics(broker: Broker) -> None:
    """For every user and every topic of the registry (and a few more): allowed or not, as
    the registry says; a forbidden message never reaches a subscriber that reads everything."""
    users = [
        *broker_setup.SERVICE_USERS,
        broker_setup.HA_USER,
    ]
    # `ha` reads both trees (and the sentinels tell when a publisher's messages are all in)
    with client(broker, "ha", PASSWORDS["ha"]) as watcher:
        assert watcher.accepted
        watcher.subscribe("hwsched/#")
        watcher.subscribe("homeassistant/#")
        expected: set[tuple[str, bytes]] = set()
        sent: set[tuple[str, bytes]] = set()
        for user in users:
            tries: list[tuple[str, bool]] = []
            for spec in TOPICS:
                allowed = user in broker_setup.writers(spec)
                tries.append((_topic(spec, user), allowed))
                if "{service}" in spec.pattern:  # never another service's liveness
                    other = "scheduler" if user != "scheduler" else "poller"
                    tries.append((_topic(spec, other), False))
            tries += [
                ("hwsched/unknown_socket", False),  # not a configured socket
                ("hwsched/anything/else/here", False),
                ("homeassistant/device/hwsched_x/config", user == "bridge"),
                ("homeassistant/status", False),
            ]
            with client(broker, user, PASSWORDS[user]) as publisher:
                assert publisher.accepted, user
                for topic, allowed in tries:
                    payload = f"{user}|{topic}".encode()
                    publisher.publish(topic, payload)
                    sent.add((topic, payload))
                    if allowed:
                        expected.add((topic, payload))
                # once this arrives, everything published before it has too (in order)
                sentinel = f"{user}|done|{uuid.uuid4().hex}".encode()
                publisher.publish(next(t for t, allowed in tries if allowed), sentinel)
                watcher.wait_for(sentinel)
        got = {m for m in watcher.messages if m in sent}
        assert got - expected == set(), "forbidden messages arrived"
        assert expected - got == set(), "allowed messages did not arrive"


def test_ha_may_override_but_not_command_or_plan(broker: Broker) -> None:
    with (
        client(broker, "actuator", PASSWORDS["actuator"]) as actuator,
        client(broker, "ha", PASSWORDS["ha"]) as ha,
    ):
        actuator.subscribe("hwsched/#")
        ha.publish("hwsched/kitchen_boiler/set", b'{"state": "on"}')
        ha.publish("hwsched/plan", b"{}")
        ha.publish("hwsched/kitchen_boiler", b"{}")
        ha.publish("hwsched/kitchen_boiler/override/set", b'{"state": "on", "duration_s": 60}')
        actuator.wait_for(b'{"state": "on", "duration_s": 60}')
        topics = [t for t, _ in actuator.messages]
        assert "hwsched/kitchen_boiler/override/set" in topics
        assert "hwsched/kitchen_boiler/set" not in topics
        assert "hwsched/plan" not in topics
        assert "hwsched/kitchen_boiler" not in topics


def test_the_health_user_reads_uptime_only(broker: Broker) -> None:
    health = (broker.workdir / "auth" / "health").read_text().strip()
    with client(broker, "health", health) as probe:
        assert probe.accepted
        probe.subscribe("$SYS/broker/uptime")
        with probe.arrived:
            assert probe.arrived.wait_for(lambda: bool(probe.messages), 5)
        probe.publish("hwsched/plan", b"from-health")
    with client(broker, "scheduler", PASSWORDS["scheduler"]) as watcher:
        watcher.subscribe("hwsched/#")
        time.sleep(0.2)
        assert all(p != b"from-health" for _, p in watcher.messages)


# --- broker_setup.py ------------------------------------------------------------------------


def test_the_password_hash_is_mosquittos() -> None:
    line = broker_setup.hash_password("secret-password", salt=b"0123456789ab", iterations=101)
    _, kind, iterations, salt, key = line.split("$")
    assert kind == "7"
    assert iterations == "101"
    assert base64.b64decode(salt) == b"0123456789ab"
    expected = hashlib.pbkdf2_hmac("sha512", b"secret-password", b"0123456789ab", 101, 64)
    assert base64.b64decode(key) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [("", "set a password"), ("change-me", "set a password"), ("short", "12 characters")],
)
def test_placeholder_and_weak_passwords_are_refused(value: str, problem: str) -> None:
    env = {broker_setup.password_env(u): pw for u, pw in PASSWORDS.items()}
    env["MQTT_ACTUATOR_PASSWORD"] = value
    with pytest.raises(broker_setup.SetupError, match=problem):
        broker_setup.passwords(env)


def test_the_env_example_is_refused_as_it_is_and_read_as_compose_does(tmp_path: Path) -> None:
    example = env_example()
    assert example["MQTT_POLLER_PASSWORD"] == "change-me"
    with pytest.raises(broker_setup.SetupError, match="MQTT_POLLER_PASSWORD"):
        broker_setup.passwords(example)
    env_file = tmp_path / ".env"
    env_file.write_text("# c\nA=1\nexport B = 'two words'\nC=\"x\" \nD=v # note\n\nbad line\n")
    assert broker_setup.read_env_file(env_file) == {"A": "1", "B": "two words", "C": "x", "D": "v"}


def test_every_publisher_in_the_registry_is_a_known_user() -> None:
    for spec in TOPICS:
        assert broker_setup.writers(spec), spec.name  # raises on an unknown publisher


def test_the_acl_follows_the_base_topic_and_the_sockets() -> None:
    from shared.config import load_devices

    acl = broker_setup.render_acl("home/energy", "ha", load_devices(EXAMPLE_DEVICES))
    assert "topic write home/energy/kitchen_boiler\n" in acl
    assert "topic write home/energy/+\n" not in acl
    assert "topic read ha/#\n" in acl
    assert "hwsched" not in acl.replace("# hwsched broker ACL", "")


def test_setup_main_writes_files_only_the_owner_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWSCHED_DEVICES_FILE", str(EXAMPLE_DEVICES))
    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(f"{broker_setup.password_env(u)}={pw}\n" for u, pw in PASSWORDS.items())
    )
    assert broker_setup.main([str(tmp_path / "auth"), "--env-file", str(env_file)]) == 0
    health = (tmp_path / "auth" / "health").read_text()
    assert broker_setup.main([str(tmp_path / "auth"), "--env-file", str(env_file)]) == 0
    assert (tmp_path / "auth" / "health").read_text() == health  # a running broker's stays
    for name in ("passwd", "acl", "health"):
        assert (tmp_path / "auth" / name).stat().st_mode & 0o077 == 0
    passwd = (tmp_path / "auth" / "passwd").read_text()
    assert all(pw not in passwd for pw in PASSWORDS.values())
    assert all(pw not in capsys.readouterr().out for pw in PASSWORDS.values())
    env_file.write_text("MQTT_POLLER_PASSWORD=change-me\n")
    for var in list(os.environ):
        if var.startswith("MQTT_"):
            monkeypatch.delenv(var)
    assert broker_setup.main([str(tmp_path / "auth2"), "--env-file", str(env_file)]) == 2
    assert "MQTT_POLLER_PASSWORD" in capsys.readouterr().err


# --- docker/healthcheck.py ------------------------------------------------------------------


def _status(stamp: datetime, service: str) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "timestamp": stamp.isoformat(),
            "service": service,
            "state": "online",
            "version": "0.1.0",
            "started_at": stamp.isoformat(),
            "counters": {},
        }
    ).encode()


def test_healthcheck_reads_the_services_liveness(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith(ENV_PREFIX):
            monkeypatch.delenv(var)
    monkeypatch.setenv("HWSCHED_BROKER__HOST", broker.host)
    monkeypatch.setenv("HWSCHED_BROKER__PORT", str(broker.port))
    monkeypatch.setenv("HWSCHED_BROKER__USERNAME", "bridge")
    monkeypatch.setenv("HWSCHED_BROKER__PASSWORD", PASSWORDS["bridge"])
    base = "hwsched/service/bridge"
    check = healthcheck.check
    with client(broker, "bridge", PASSWORDS["bridge"]) as service:
        service.publish(f"{base}/availability", b"online", retain=True)
        service.publish(f"{base}/status", _status(datetime.now(UTC), "bridge"), retain=True)
        assert check("bridge", max_age_s=180, timeout_s=5) is None
        old = datetime.now(UTC) - timedelta(minutes=10)
        service.publish(f"{base}/status", _status(old, "bridge"), retain=True)
        assert "old" in (check("bridge", max_age_s=180, timeout_s=5) or "")
        service.publish(f"{base}/availability", b"offline", retain=True)
        assert "offline" in (check("bridge", max_age_s=180, timeout_s=5) or "")
    assert "no availability" in (check("actuator", max_age_s=180, timeout_s=0.5) or "")
    monkeypatch.setenv("HWSCHED_BROKER__PASSWORD", "wrong-password")
    assert "refused" in (check("bridge", max_age_s=180, timeout_s=5) or "")


def test_healthcheck_of_the_simulator_asks_its_control_api(tmp_path: Path) -> None:
    import http.server

    class Control(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/control/state"
            body = b'{"house": {}}' if ok else b"{}"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    info = tmp_path / "simulator.json"
    assert "no control URL" in (healthcheck.check_simulator(timeout_s=2, info=info) or "")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Control)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/control"
        info.write_text(json.dumps({"control_url": url}))
        assert healthcheck.check_simulator(timeout_s=2, info=info) is None
        info.write_text(json.dumps({"control_url": url + "/nothing-here"}))
        assert "does not answer" in (healthcheck.check_simulator(timeout_s=2, info=info) or "")
    finally:
        server.shutdown()
        server.server_close()
    assert "does not answer" in (healthcheck.check_simulator(timeout_s=2, info=info) or "")
