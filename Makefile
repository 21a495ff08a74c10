# payment-service. On a fresh machine: `make demo`, `make test`. Nothing else to start.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Sandbox defaults for `make run` / `make sandbox`; override in the environment.
export API_TOKENS   ?= dev-api-token
export LEDGER_URL   ?= http://127.0.0.1:8090/ledger
export LEDGER_TOKEN ?= dev-ledger-token
export OPS_TOKENS   ?= dev-ops-token
export CORE_CALLBACK_URL   ?= http://127.0.0.1:8090/core
export CORE_CALLBACK_TOKEN ?= dev-ledger-token

.PHONY: setup lock promtool demo run sandbox migrate test lint bench fuzz soak clean

setup: $(STAMP)

# Exactly the locked versions (hashes checked), then the project itself.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@$(MAKE) --no-print-directory promtool
	touch $(STAMP)

# promtool checks and unit-tests deploy/prometheus/alerts.yml in `make test`. It
# comes from Debian's prometheus package (as root, where apt-get exists); without
# it those tests skip and say why. Never fails the setup.
promtool:
	@command -v promtool >/dev/null 2>&1 && exit 0; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing promtool (Debian's prometheus package)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
		     apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; } \
		|| echo "promtool could not be installed: the alert-rule tests will skip"; \
	else echo "promtool not found and not installable here (needs root and apt-get): the alert-rule tests will skip"; fi

lock: ## re-resolve requirements.lock from pyproject.toml (newest allowed versions, with hashes)
	$(PY) -m pip install -q uv==0.13.9
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --universal \
		--python-version 3.11 --upgrade -o requirements.lock
	rm -f $(STAMP)

demo: setup ## start everything embedded, run a batch of withdrawals, print outcomes
	$(PY) -m sandbox.demo

run: setup ## API + worker(s) against DATABASE_URL / NATS_URL (embedded when unset)
	$(PY) -m service.run

sandbox: setup ## the simulated ledger and providers of config/sandbox.toml on :8090
	$(PY) -m sandbox --config config/sandbox.toml --port 8090

migrate: setup ## apply the missing migrations (ours and procrastinate's), in order, once
	$(PY) -m engine.migrations $(if $(PRE_DEPLOY),--pre-deploy,)

test: setup ## the whole suite against a real PostgreSQL (embedded when DATABASE_URL is unset)
	@$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests (exit 5): that is a failure" >&2; exit 1; fi; \
	exit $$status

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check workflows activities engine service server.py worker.py
	$(VENV)/bin/mypy .

fuzz: setup ## schemathesis against the served OpenAPI document of a local stack (FUZZ_EXAMPLES per operation)
	$(PY) -m pip install -q -e '.[dev,fuzz]'
	$(PY) -m sandbox.fuzz --max-examples $${FUZZ_EXAMPLES:-100}

soak: setup ## seeded chaos soak, every fault at once (SHORT=1: about a minute; also in make test)
	$(PY) -m sandbox.soak $(if $(SHORT),--short,) $(if $(SEED),--seed $(SEED),)

bench: setup
	@ls bench/*.py >/dev/null 2>&1 || { echo "no benchmarks yet"; exit 0; }
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .data .mypy_cache .ruff_cache .pytest_cache
