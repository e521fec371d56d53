"""Experiment tracking (MLflow): loggers, run parameters and artifacts. Models never import this."""
