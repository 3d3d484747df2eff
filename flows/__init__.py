"""Prefect flows wiring the stage tasks together, and the `distillery` CLI."""
