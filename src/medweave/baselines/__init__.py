"""Tabular baselines (count features, GBM, logistic / Cox regression): arms beside the neural ones."""
