"""Pretraining on every subject's timeline: the backbone (backbone.py), the objectives that train
it (objectives.py), the LightningModule that runs them (module.py), and loading it into the EHR
codes encoder for fine-tuning or embedding (load.py)."""
