"""The sandbox: a synthetic cohort whose latent disease process shows up in every modality.

It stands alone (no model, data-module or tracking import) so that it can run anywhere.
"""
