"""distillery's ML core: config, data, models, losses, training and the stage store.

Imports neither prefect nor mlflow; orchestration and tracking live in `tasks/` and `flows/`.
"""
