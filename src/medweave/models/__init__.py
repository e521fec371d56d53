"""Encoders (one per modality), fusion, task heads, and the LightningModule that runs them.

Every encoder maps its modality's batch entry to [B, dim]; the module zeroes rows whose
``<modality>_mask`` is False before fusion, and every fusion method is told the masks too.
"""
