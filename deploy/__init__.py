"""Export, quantization and (torch-free) edge runtime. Imports neither prefect nor mlflow."""
