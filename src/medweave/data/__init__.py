"""Cohorts in, batches out: the contract, one reader per format, the prepared cache, the DataModule.

This package knows no model: it hands encoders tensors and the sizes they need.
"""
