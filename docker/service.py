"""A service image's entry point: run `services.<SERVICE>` (the image's SERVICE variable).

    python /app/service.py [ARGS...]    # = python -m services.<SERVICE> ARGS...
    python /app/service.py --check      # the build's check: every module of the service imports

One Dockerfile builds every service (docker/Dockerfile, build argument SERVICE); the image
keeps the name in the environment variable SERVICE, which this and docker/healthcheck.py
read. The service runs in this process (runpy, as `python -m` does), so it is the container's
PID 1 and gets Docker's signals itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import re
import runpy
import sys
from collections.abc import Sequence

#: The image's service: services/<name>/__main__.py.
SERVICE_ENV = "SERVICE"


def service_name() -> str:
    name = os.environ.get(SERVICE_ENV, "")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise SystemExit(f"{SERVICE_ENV} must name a service (services/<name>), got {name!r}")
    return name


def check(name: str) -> list[str]:
    """Import every module of `services.<name>` but its `__main__` (which would run it)."""
    package = importlib.import_module(f"services.{name}")
    if importlib.util.find_spec(f"services.{name}.__main__") is None:
        raise SystemExit(f"services.{name} has no __main__: not a service")
    imported = [package.__name__]
    for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if module.name.rsplit(".", 1)[-1] == "__main__":
            continue
        importlib.import_module(module.name)
        imported.append(module.name)
    return imported


def main(argv: Sequence[str]) -> None:
    name = service_name()
    if list(argv) == ["--check"]:
        modules = check(name)
        print(f"{name}: {len(modules)} modules import ({', '.join(modules)})")
        return
    module = f"services.{name}"
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
