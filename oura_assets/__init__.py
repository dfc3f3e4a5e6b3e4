"""oura_assets: Oura Ring data (Oura Cloud API v2) into a DuckDB patient warehouse with Dagster."""
