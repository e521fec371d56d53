"""Metrics torchmetrics lacks, computed by the libraries that define them."""
