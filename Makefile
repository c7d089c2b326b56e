# Stencil: `make run` (zero-setup demo) and `make test` (the whole suite on PostgreSQL).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/stencil
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test bench lint lock venv system-packages run-packages services clean

$(STAMP): pyproject.toml constraints.txt
	@bash scripts/apt-install.sh libvirt-dev pkg-config
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: installing python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# qemu-img inspects every image; Chromium drives the browser test (from Debian, never
# downloaded by Playwright).
RUN_PACKAGES := qemu-utils libvirt-dev pkg-config
TEST_PACKAGES := $(RUN_PACKAGES) chromium libvirt-daemon libvirt-clients qemu-system-x86
system-packages:
	@bash scripts/apt-install.sh $(TEST_PACKAGES)

run-packages:
	@bash scripts/apt-install.sh $(RUN_PACKAGES)

# PostgreSQL and Redis must answer; start them if installed but down. Never fall back to SQLite.
services:
	@bash scripts/ensure-services.sh

# A real libvirtd on qemu:///system for the tests that run on both libvirt backends.
.PHONY: libvirtd
libvirtd:
	@bash scripts/ensure-libvirtd.sh

run: $(STAMP) run-packages
	@bash scripts/run.sh

test: $(STAMP) system-packages services libvirtd
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	STENCIL_ENV=test DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python manage.py makemigrations --check --dry-run
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) \
	  $(BIN)/pytest -n 2 --dist loadgroup -p no:cacheprovider

# Every benchmark in bench/, then one table of figures, ratios and targets (< 20 min on 2 cores).
bench: $(STAMP) services
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | sed '1i # Pinned set that CI and make run install (pip install -c constraints.txt). Regenerate with: make lock' > constraints.txt

clean:
	rm -rf $(VENV) var
