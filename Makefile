# Every target creates or refreshes .venv itself, so a fresh clone needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format dev simulator api bench soak sql clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "oura_assets needs Python 3.11+; set PYTHON=python3.11 (or newer)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	OURA_ASSETS_DEMO=1 $(BIN)/oura-assets demo

# Three pytest-xdist workers on CI's 2 cores (TEST_WORKERS=0 runs in this process): `loadgroup` keeps the tests
# sharing a module-scoped fixture on one worker and the process races on one worker in turn; the rest go one by
# one, slow ones first (conftest.py). The races mostly wait on their children (143 s of wall, ~75 CPU-s), so a
# third worker keeps both cores busy meanwhile: 315 s -> 277 s for the suite, the same CPU (2026-12-04).
TEST_WORKERS ?= 3
test: $(STAMP)
	sh scripts/ensure-postgres
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

dev: $(STAMP)
	OURA_ASSETS_DEMO=1 $(BIN)/oura-assets dev

simulator: $(STAMP)
	OURA_ASSETS_DEMO=1 $(BIN)/oura-assets simulator

api: $(STAMP)
	OURA_ASSETS_DEMO=1 $(BIN)/oura-assets serve

# An interactive DuckDB shell on the read-only analytics snapshot (published by every run; `make demo` makes one).
ANALYTICS ?= $(or $(OURA_ASSETS_ANALYTICS),data/analytics.duckdb)
sql: $(STAMP)
	@test -f "$(ANALYTICS)" || { echo "no analytics snapshot at $(ANALYTICS) yet: run 'make demo' (or any sync run) first"; exit 1; }
	@# An encrypted snapshot (OURA_ASSETS_WAREHOUSE_KEY, or the demo's key) is attached from an init file made
	@# 0600 by mktemp, so the key never shows in the process list.
	@key="$${OURA_ASSETS_WAREHOUSE_KEY:-$$(cat data/demo-warehouse-key 2>/dev/null)}"; init=$$(mktemp); \
	if [ -n "$$key" ]; then \
	  printf "ATTACH '%s' AS analytics (ENCRYPTION_KEY '%s', READ_ONLY);\nUSE analytics;\n" "$(ANALYTICS)" "$$key" > "$$init"; \
	else \
	  printf "ATTACH '%s' AS analytics (READ_ONLY);\nUSE analytics;\n" "$(ANALYTICS)" > "$$init"; \
	fi; \
	printf "SELECT 'snapshot published at ' || published_at AS snapshot FROM snapshot_info;\n" >> "$$init"; \
	$(BIN)/duckdb -init "$$init"; status=$$?; rm -f "$$init"; exit $$status

bench: $(STAMP)
	$(BIN)/python bench/run.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) data/*.duckdb data/*.wal
