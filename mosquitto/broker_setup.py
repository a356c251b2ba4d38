"""The broker's password file and ACL, from the environment, the topic registry and the devices.

    python mosquitto/broker_setup.py OUT_DIR [--env-file .env] [--owner UID:GID]

writes, each atomically and readable by its owner only:

* `OUT_DIR/passwd`: one user per hwsched service (`poller`, `forecaster`, `scheduler`,
  `actuator`, `bridge`, `prices`, `dashboard`), `ha` for Home Assistant / Node-RED when
  `MQTT_HA_PASSWORD` is set, and `health` (the broker's own healthcheck: a random password,
  kept in `OUT_DIR/health` and reused by later runs). Passwords come from
  `MQTT_<USER>_PASSWORD` (the environment, or `--env-file`); hashed as `mosquitto_passwd`
  does (PBKDF2-SHA512, `$7$`), so no password is ever on a command line. An empty or
  placeholder (`change-me…`) password is refused;
* `OUT_DIR/acl`: rendered from `shared.topics.TOPICS` (who publishes what: the part of each
  topic's `direction` before `→`), the settings' `base_topic` and the devices file (see
  `render_acl`). Every user may read `<base>/#` (and `ha` the discovery prefix too); each may
  write only the topics the registry gives its role (plus, for the bridge, Home Assistant's
  discovery configs: `EXTERNAL_WRITES`).

compose.yaml runs this at every `docker compose up` (service `broker-setup`, before the
broker), so a starting broker always matches `.env`, `config/settings.toml` and the devices
file. A broker that is already running reads the files again only on SIGHUP or a restart:
`make broker-passwords` runs the setup and sends the SIGHUP (after changing a password, the
devices or the base topic).
Exit status 2 with one line on stderr on anything wrong.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

# The repository root, so `shared` imports when run as `python mosquitto/broker_setup.py`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.config import ConfigError, DevicesConfig, load_devices, load_settings
from shared.topics import TOPICS, TopicSpec

#: The MQTT users of the hwsched services: a user's name is its service's name.
SERVICE_USERS = (
    "poller",
    "forecaster",
    "scheduler",
    "actuator",
    "bridge",
    "prices",
    "dashboard",
)
#: Topics outside the registry, under the Home Assistant discovery prefix (`{ha}`): the
#: bridge publishes device-based discovery configs (and clears stale ones), and reads HA's
#: birth message and the configs already there.
EXTERNAL_WRITES: dict[str, tuple[str, ...]] = {"bridge": ("{ha}/device/+/config",)}
EXTERNAL_READS: dict[str, tuple[str, ...]] = {
    "bridge": ("{ha}/status", "{ha}/device/+/config"),
    "ha": ("{ha}/#",),
}
#: Home Assistant / Node-RED: reads everything, publishes what the registry gives HA.
HA_USER = "ha"
#: The broker container's healthcheck: may read `$SYS/broker/uptime` only.
HEALTH_USER = "health"
#: The words of a topic's `direction` (before `→`) that stand for the `ha` user.
_HA_WORDS = frozenset({"HA", "Node-RED", "user"})
_EACH_SERVICE = "each service"
#: Passwords that are refused: the placeholders of .env.example.
PLACEHOLDER_PREFIXES = ("change-me", "changeme")
#: mosquitto_passwd's hash: PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte key.
_SALT_BYTES = 12
_KEY_BYTES = 64
ITERATIONS = 10_000
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


class SetupError(Exception):
    """Something that stops the setup (one line)."""


def password_env(user: str) -> str:
    """The environment variable holding `user`'s password: `MQTT_POLLER_PASSWORD`."""
    return f"MQTT_{user.upper()}_PASSWORD"


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """`password` in mosquitto's password-file form: `$7$<iterations>$<salt>$<key>`."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _KEY_BYTES)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(key).decode()}"


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of a compose-style env file (comments, blanks and quotes handled)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SetupError(f"{path}: cannot read: {err.strerror}") from None
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _ENV_LINE.match(line)
        if found is None:
            continue
        key, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    return out


def passwords(env: Mapping[str, str]) -> dict[str, str]:
    """Each user's password; SetupError naming the variable for a missing or placeholder one."""
    out: dict[str, str] = {}
    for user in (*SERVICE_USERS, HA_USER):
        name = password_env(user)
        value = env.get(name, "")
        if user == HA_USER and not value:
            continue  # no Home Assistant / Node-RED user
        if not value or value.lower().startswith(PLACEHOLDER_PREFIXES):
            raise SetupError(f"{name}: set a password of its own (see .env.example)")
        if len(value) < 12 or any(c.isspace() or c == ":" for c in value):
            raise SetupError(f"{name}: at least 12 characters, no spaces or ':'")
        out[user] = value
    return out


def writers(spec: TopicSpec) -> tuple[str, ...]:
    """The users that may publish on `spec`'s topics (from its `direction`)."""
    who = [w.strip() for w in spec.direction.split("→", 1)[0].split(",")]
    users: list[str] = []
    for word in who:
        if word == _EACH_SERVICE:
            users.extend(SERVICE_USERS)
        elif word in SERVICE_USERS:
            users.append(word)
        elif word in _HA_WORDS:
            users.append(HA_USER)
        else:
            raise ValueError(f"topic {spec.name}: unknown publisher {word!r} in {spec.direction!r}")
    return tuple(dict.fromkeys(users))


def write_filters(spec: TopicSpec, user: str, base: str, devices: DevicesConfig) -> list[str]:
    """The ACL topics that let `user` publish on `spec`'s topics.

    `{service}` is the user's own name. A pattern that is a placeholder alone (`{socket}`:
    `<base>/<socket>`) gets one line per configured socket, since `<base>/+` would also match
    the layout's own first-level topics (`plan`, `surplus`, ...); other placeholders are `+`.
    """
    if spec.segments in (("{socket}",), ("{device}",)):
        things = devices.sockets if spec.segments == ("{socket}",) else devices.devices
        return [spec.build(base, **{spec.params[0]: d.slug}) for d in things]
    parts = [base]
    for segment in spec.segments:
        if segment == "{service}":
            parts.append(user)
        elif segment.startswith("{"):
            parts.append("+")
        else:
            parts.append(segment)
    return ["/".join(parts)]


def render_acl(base: str, ha_prefix: str, devices: DevicesConfig, *, ha: bool = True) -> str:
    """The ACL file: per user, what it may read and write."""
    lines = [
        "# hwsched broker ACL: GENERATED by mosquitto/broker_setup.py from shared/topics.py",
        "# (TOPICS: who publishes which topic), the base topic and the devices file.",
        "# Do not edit: change the registry or the devices, then run the setup again.",
        "",
        "# No topic is open to a client without a user (allow_anonymous is false as well).",
        "",
        f"user {HEALTH_USER}",
        "topic read $SYS/broker/uptime",
    ]
    users = [*SERVICE_USERS, *([HA_USER] if ha else [])]
    for user in users:
        lines += ["", f"user {user}", f"topic read {base}/#"]
        lines += [f"topic read {t.format(ha=ha_prefix)}" for t in EXTERNAL_READS.get(user, ())]
        filters: list[str] = []
        for spec in TOPICS:
            if user in writers(spec):
                filters.extend(write_filters(spec, user, base, devices))
        filters += [t.format(ha=ha_prefix) for t in EXTERNAL_WRITES.get(user, ())]
        lines += [f"topic write {f}" for f in dict.fromkeys(filters)]
    return "\n".join(lines) + "\n"


def render_passwd(users: Mapping[str, str]) -> str:
    return "".join(f"{user}:{hash_password(pw)}\n" for user, pw in users.items())


def _write(path: Path, text: str, owner: tuple[int, int] | None) -> None:
    """Write atomically, mode 0600 (and chown when asked: the broker's own user)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _owner(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    uid, _, gid = text.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise SetupError(f"--owner: UID:GID as numbers (got {text!r})") from None


def setup(out_dir: Path, env: Mapping[str, str], *, owner: tuple[int, int] | None = None) -> None:
    """Write `passwd`, `health` and `acl` into `out_dir` (see the module docstring)."""
    users = passwords(env)
    try:
        settings = load_settings()
        devices = load_devices(settings.devices_file)
    except ConfigError as err:
        raise SetupError(str(err)) from None
    acl = render_acl(
        settings.base_topic, settings.ha_discovery_prefix, devices, ha=HA_USER in users
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Kept across runs: a broker still running on the previous files keeps passing its check.
    health_file = out_dir / "health"
    health = health_file.read_text().strip() if health_file.is_file() else ""
    if not re.fullmatch(r"[0-9a-f]{48}", health):
        health = secrets.token_hex(24)
    _write(out_dir / "passwd", render_passwd({**users, HEALTH_USER: health}), owner)
    _write(out_dir / "health", health + "\n", owner)
    _write(out_dir / "acl", acl, owner)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="broker_setup.py", description="Write the broker's password file and ACL."
    )
    parser.add_argument("out_dir", type=Path, help="where passwd, acl and health go")
    parser.add_argument("--env-file", type=Path, help="read MQTT_*_PASSWORD from this file too")
    parser.add_argument("--owner", metavar="UID:GID", help="owner of the files (the broker's)")
    args = parser.parse_args(argv)
    try:
        env = dict(os.environ)
        if args.env_file is not None:
            env = {**read_env_file(args.env_file), **env}
        setup(args.out_dir, env, owner=_owner(args.owner))
    except SetupError as err:
        print(f"broker setup: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"broker setup: {err.filename or args.out_dir}: {err.strerror}", file=sys.stderr)
        return 2
    users = ", ".join(u for u in (*SERVICE_USERS, HA_USER) if password_env(u) in env)
    print(f"broker setup: wrote {args.out_dir}/passwd ({users}, {HEALTH_USER}) and acl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
