# payment-service. On a fresh machine: `make demo`, `make test`. Nothing else to start.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Sandbox defaults for `make run` / `make sandbox`; override in the environment.
export API_TOKENS   ?= dev-api-token
export LEDGER_URL   ?= http://127.0.0.1:8090/ledger
export LEDGER_TOKEN ?= dev-ledger-token
# People sign in at `make sandbox`'s local OpenID issuer on :9400 (sandbox/issuer.py).
export OIDC_ISSUER        ?= http://127.0.0.1:9400
export OIDC_CLIENT_ID     ?= payment-console
export OIDC_CLIENT_SECRET ?= dev-console-secret
export OIDC_GROUP_ROLES   ?= payments-resolvers=resolver,payments-approvers=approver,payments-admins=admin
export CONSOLE_SECRET     ?= dev-console-cookie-key
export CORE_CALLBACK_URL   ?= http://127.0.0.1:8090/core
export CORE_CALLBACK_TOKEN ?= dev-ledger-token

.PHONY: setup lock tools demo run sandbox stop status migrate test lint bench fuzz soak ha clean

setup: $(STAMP)

# Exactly the locked versions (hashes checked), then the project itself.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@$(MAKE) --no-print-directory tools
	touch $(STAMP)

# Tools some tests need, from Debian's packages (as root, where apt-get exists):
# promtool (package prometheus) checks and unit-tests deploy/prometheus/alerts.yml;
# chromium drives the console's browser tests (Playwright). Without them those
# tests skip and say why. Never fails the setup.
# etcd (package etcd-server) holds the leader key of `make ha`'s Patroni cluster.
TOOLS := promtool:prometheus chromium:chromium etcd:etcd-server
tools:
	@for pair in $(TOOLS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	command -v $$cmd >/dev/null 2>&1 && continue; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing $$cmd (Debian's $$pkg package)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$pkg >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
		     apt-get install -y -q --no-install-recommends $$pkg >/dev/null 2>&1; } \
		|| echo "$$cmd could not be installed: the tests that need it will skip"; \
	else echo "$$cmd not found and not installable here (needs root and apt-get): the tests that need it will skip"; fi; \
	done

# Regenerate requirements.lock after a change to pyproject.toml's dependencies. uv
# keeps every pin the lock already has unless the change needs another; it runs
# from its own venv (.venv-lock), so the project's stays exactly the locked set.
lock: ## requirements.lock from pyproject.toml (hashes, every platform, Python 3.11)
	@test -x .venv-lock/bin/uv || { $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q uv; }
	.venv-lock/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --universal \
		--python-version 3.11 -o requirements.lock

# Which market of config/markets/ the demo runs: default (the case study's table),
# outage (the cheapest provider's bad hour), regression (a fault only the cascades
# meet: the cohort guard moves them back). `python -m sandbox.demo --help` for more.
SCENARIO ?= default
demo: setup ## start everything embedded, run a batch of withdrawals, print outcomes (SCENARIO=name)
	$(PY) -m sandbox.demo --scenario $(SCENARIO)

run: setup ## API + worker(s) against DATABASE_URL / NATS_URL (embedded when unset); PORT, WORKERS, WORKER_METRICS_PORT
	$(PY) -m service.run

sandbox: setup ## the simulated ledger and providers of config/sandbox.toml on :8090, the OpenID issuer on :9400
	$(PY) -m sandbox --config config/sandbox.toml --port 8090 --issuer-port 9400

# A 3-node HA PostgreSQL (etcd + three Patroni nodes, PostgreSQL on :5441-5443), left
# running in the background; the last line is its multi-host URL. HA_MODE=async for the
# lossy variant. Patroni's own venv is built on first use. `make stop` stops it.
HA_MODE ?= sync
ha: setup ## a 3-node HA PostgreSQL (etcd + Patroni) in the background; prints the multi-host URL
	$(PY) -m sandbox.ha_cli start --mode $(HA_MODE)

# devstack knows nothing of the sandbox: `make ha`'s cluster is stopped by its own CLI.
stop: setup ## stop what `make run`, `make sandbox`, the embedded PostgreSQL and `make ha` run, from any terminal
	$(PY) -m devstack.lifecycle stop
	$(PY) -m sandbox.ha_cli stop

status: setup ## the database URL and what of the local stack is running
	$(PY) -m devstack.lifecycle status

# DATABASE_URL, else the embedded PostgreSQL (started and left running if need be).
migrate: setup ## apply the missing migrations (ours and procrastinate's), in order, once
	$(PY) -m service.migrate $(if $(PRE_DEPLOY),--pre-deploy,)

test: setup ## the whole suite against a real PostgreSQL (embedded when DATABASE_URL is unset)
	@$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests (exit 5): that is a failure" >&2; exit 1; fi; \
	exit $$status

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check workflows activities engine service server.py worker.py devstack
	$(VENV)/bin/mypy .

fuzz: setup ## schemathesis against the served OpenAPI document of a local stack (FUZZ_EXAMPLES per operation)
	$(PY) -m pip install -q -e '.[dev,fuzz]'
	$(PY) -m sandbox.fuzz --max-examples $${FUZZ_EXAMPLES:-100}

# HA=1: on a 3-node Patroni cluster (synchronous, strict) whose primary's machine is
# killed; HA=lossy: asynchronous, each failover loses its last commits (docs/ha.md).
soak: setup ## seeded chaos soak, every fault at once (SHORT=1: about a minute; also in make test; HA=1|lossy)
	$(PY) -m sandbox.soak $(if $(SHORT),--short,) $(if $(SEED),--seed $(SEED),) \
		$(if $(filter lossy,$(HA)),--ha lossy,$(if $(HA),--ha sync,))

bench: setup
	@ls bench/*.py >/dev/null 2>&1 || { echo "no benchmarks yet"; exit 0; }
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-lock .data .mypy_cache .ruff_cache .pytest_cache
