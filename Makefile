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

$(FSTAMP): requirements/forecaster.lock pyproject.toml
	test -x $(FBIN)/python || $(FPY) -m venv $(FVENV)
	$(FBIN)/python -m pip install -q --upgrade pip
	$(FBIN)/python -m pip install -q -r requirements/forecaster.lock
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

## The main job: the whole product on a simulated house (broker, house, all services).
run: $(STAMP) $(FSTAMP)
	$(BIN)/hwsched run

## Plan the example day and print the plan readably.
plan-example: $(STAMP)
	$(BIN)/hwsched plan config/example-day.json --show

## Every check: ruff, mypy (strict on shared/), pytest, the forecaster's, the fault soak's.
test: lint typecheck pytest test-forecaster test-faults

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy shared services bench

pytest: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench.planners

## Re-pin the locks from what is installed in the venv (review the diff!).
lock:
	@echo "edit requirements/*.in ranges in pyproject.toml, reinstall, then copy pins from: $(BIN)/pip freeze"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

## Constant vs fading forecast shift on simulated days (the scheduler's default).
.PHONY: bench-shift
bench-shift: $(STAMP)
	$(BIN)/python -m bench.shift

## Docker (compose.yaml). The broker's password file and ACL from .env, the settings and the
## devices file (every `docker compose up` does this too); a running broker reloads them.
.PHONY: broker-passwords images images-multiarch
DOCKER_SERVICES := poller forecaster scheduler actuator bridge simulator
IMAGE_TAG ?= 0.1.0

broker-passwords:
	@test -f .env || { echo "no .env: cp .env.example .env, then set the passwords"; exit 2; }
	docker compose run --rm broker-setup
	@if [ -n "$$(docker compose ps -q mosquitto 2>/dev/null)" ]; then \
		docker compose kill -s SIGHUP mosquitto; fi

## Build every image for this machine (hwsched/<service>:$(IMAGE_TAG)); sizes: docker image ls.
images:
	docker compose --profile sim build
	docker image ls 'hwsched/*'

## Build (and push with PUSH=--push) amd64 + arm64 images with buildx.
images-multiarch:
	for s in $(DOCKER_SERVICES); do \
		docker buildx build --platform linux/amd64,linux/arm64 $(PUSH) \
			-f services/$$s/Dockerfile -t hwsched/$$s:$(IMAGE_TAG) . || exit 1; done

## Measurement-to-command latency (p50/p99, 1000 cycles) and each service's peak memory,
## the services as processes against a throwaway mosquitto and the simulated house.
.PHONY: bench-latency
bench-latency: $(STAMP)
	$(BIN)/python -m bench.latency
