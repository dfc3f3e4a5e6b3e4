"""Dagster objects for the Oura pipeline: one small module per concern, assembled in `definitions.py`."""
