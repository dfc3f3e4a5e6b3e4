"""oura_assets: Oura Ring data (Oura Cloud API v2) into a DuckDB patient warehouse with Dagster."""

from oura_assets import absent_modules

# Before anything binds a DuckDB parameter: see absent_modules (a failed pandas import per parameter).
absent_modules.install()
