"""Thin Prefect tasks around the core stages, and the one module that talks to MLflow."""
