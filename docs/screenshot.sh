#!/bin/sh
# Regenerates docs/ui-backfill.png, the README's picture of a range backfill launched from the Dagster UI.
#
# It runs the test that launches that backfill as the UI does (oura_assets_tests/test_ui_backfill.py: the
# webserver and daemon over this checkout's workspace.yaml and dagster.yaml, the simulator, two connected
# patients, days 2024-06-10..2024-06-16) and, once the test has checked the run and its events, has headless
# Chromium photograph the backfill's page. Needs Chromium (Debian: apt-get install chromium) and `make venv`.
set -eu
cd "$(dirname "$0")/.."
OURA_ASSETS_SCREENSHOT="$PWD/docs/ui-backfill.png" \
    .venv/bin/python -m pytest -q -p no:cacheprovider oura_assets_tests/test_ui_backfill.py
echo "wrote docs/ui-backfill.png"
