"""A Hydra sweeper on Optuna (hydra/sweeper=medweave_optuna), found by Hydra's plugin discovery."""
