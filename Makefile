# The README's two commands: `make run` (the product, embedded default) and `make test`.
# `make install` makes the virtualenv from requirements*.txt and node_modules from package-lock.json.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: install run prod-up prod-down test test-fast lint format clean bench bench-export bench-fanout bench-intake bench-console bench-download bench-integrations bench-profiles bench-patching bench-sessions agent-deb

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# The console's front-end libraries (htmx, Chart.js), exactly as package-lock.json pins them.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# Debian's nginx and systemd-analyze for the deployment tests (deploy/), nftables for the containment
# test and rsyslog for the SIEM feed's test (installed as root only).
install: $(STAMP) node_modules/.installed
	@sh scripts/ensure-deb.sh /usr/sbin/nginx nginx "the deployment tests (deploy/nginx)"
	@sh scripts/ensure-deb.sh /usr/sbin/rsyslogd rsyslog "the SIEM feed test"
	@sh scripts/ensure-deb.sh /usr/bin/systemd-analyze systemd "the deployment tests (deploy/systemd)"
	@sh scripts/ensure-deb.sh /usr/sbin/nft nftables "the containment test"

run: install
	$(BIN)/python manage.py rmm_run

# The production layout of deploy/ on this machine, in the background (docs/operations.md, "Try the
# layout on one machine"): nginx on https://127.0.0.1:$(PROD_PORT) with a CA made for it, two uvicorn
# agent-tier workers, one daphne worker, the task cluster; state, logs and pids in var/prod/.
PROD_PORT ?= 8443
prod-up: install
	$(BIN)/python manage.py rmm_prod up --port $(PROD_PORT)

prod-down:
	$(BIN)/python manage.py rmm_prod down

# On both cores; then the fault drills (PostgreSQL leg only), which kill and stop processes, alone
# (pytest's exit 5: PYTEST_ARGS chose none of them).
test: install
	@sh scripts/ensure-chromium.sh
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not faults" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m faults $(PYTEST_ARGS) || [ $$? -eq 5 ]

# While working: everything but the slow end-to-end tests (tests/e2e/), on both cores.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadgroup $(PYTEST_ARGS)

# The fleet benchmark (docs/performance.md): a short profile by default, e.g.
# `make bench FLEET=10000 DURATION=60` for the goal, SERVER=daphne for daphne workers,
# PROXY=nginx for the agents through Debian's nginx and the shipped site over https.
# Needs PostgreSQL and Redis on 127.0.0.1.
FLEET ?= 3000
INTERVAL ?= 30
DURATION ?= 45
WORKERS ?= 2
API_WORKERS ?= 1
SIM ?= 2
FANOUT ?= 10000
SERVER ?= uvicorn
PROXY ?=
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m bench --fleet $(FLEET) --interval $(INTERVAL) --duration $(DURATION) \
		--workers $(WORKERS) --api-workers $(API_WORKERS) --sim $(SIM) --fanout $(FANOUT) --server $(SERVER) \
		$(if $(PROXY),--proxy $(PROXY)) $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The compliance-export benchmark (docs/evidence.md): 100,000 items by default, e.g. BENCH_ARGS="--items 20000".
bench-export: install
	$(BIN)/python bench/export_bench.py $(BENCH_ARGS)

# The fan-out alone, in process, on PostgreSQL (docs/performance.md), e.g. FANOUT=2000 BENCH_ARGS="--content-kib 64".
bench-fanout: install
	$(BIN)/python -m bench.fanout_profile --assets $(FANOUT) $(BENCH_ARGS)

# Result intake alone, in process, on PostgreSQL (docs/performance.md), e.g. INTAKE=2000 BENCH_ARGS="--threads 4".
INTAKE ?= 2000
bench-intake: install
	$(BIN)/python -m bench.intake_profile --assets $(INTAKE) $(BENCH_ARGS)

# The console at fleet scale (docs/performance.md): seeds rmm_console_bench on 127.0.0.1's PostgreSQL
# and times the dashboard, asset list and job list, e.g. BENCH_ARGS=--measure-only to measure again.
ASSETS ?= 100000
JOBS ?= 1000000
bench-console: install
	$(BIN)/python -m bench.console_bench --assets $(ASSETS) --jobs $(JOBS) $(BENCH_ARGS)

# Many agents fetching one deployment artefact at once (docs/performance.md), on 127.0.0.1's PostgreSQL,
# e.g. BENCH_ARGS="--agents 200 --mib 5".
bench-download: install
	$(BIN)/python -m bench.download_bench $(BENCH_ARGS)

# Integrations (docs/performance.md): events a second through the outbox to a receiver on 127.0.0.1
# (signed, verified), and the SIEM feed's lag at 333 heartbeats a second. Needs PostgreSQL and
# Redis on 127.0.0.1 (DATABASE_URL's server, REDIS_URL's database), e.g. BENCH_ARGS="--events 5000".
bench-integrations: install
	$(BIN)/python -m bench.integrations_bench $(BENCH_ARGS)

# Configuration audits at fleet scale (docs/performance.md): one 50-item audit result per asset taken in,
# then the compliance summary over them all, on 127.0.0.1's PostgreSQL, e.g. BENCH_ARGS="--ingest 1000".
PROFILE_ASSETS ?= 10000
bench-profiles: install
	$(BIN)/python -m bench.profiles_bench --assets $(PROFILE_ASSETS) $(BENCH_ARGS)

# Scan intake and fleet patch compliance (docs/performance.md): 10,000 assets × 2,000 packages by
# default on a scratch PostgreSQL database, e.g. BENCH_ARGS="--assets 2000 --sample 100".
bench-patching: install
	$(BIN)/python -m bench.patching_bench $(BENCH_ARGS)

# Remote sessions (docs/performance.md): terminal sessions opened through the API, each typing 1 MB that the
# agent's side echoes back through the relay, on 127.0.0.1's PostgreSQL and REDIS_URL's Redis database
# (flushed), e.g. BENCH_ARGS="--sessions 10 --workers 2".
bench-sessions: install
	$(BIN)/python -m bench.sessions_bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var node_modules

# The agent's Debian package under dist/ (docs/agent.md); its path is the last line printed.
# PKG and VERSION override the package's name and version (tests use a unique name).
agent-deb:
	@PKG=$(or $(PKG),rmm-agent) VERSION=$(VERSION) sh packaging/build-agent-deb.sh
