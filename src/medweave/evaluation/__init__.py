"""Evaluation a researcher can publish from: metrics with bootstrap CIs, subgroups, modality
attribution, and an HTML report (report.py). medweave-eval drives it."""
