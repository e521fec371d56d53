"""medweave: multimodal precision-medicine research on MEDS cohorts.

Heavy libraries (torch, lightning, transformers, monai, mlflow) are imported where they are
used, never here, so that command-line help and validation start fast.
"""

__version__ = "0.1.0"
