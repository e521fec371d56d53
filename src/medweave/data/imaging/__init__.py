"""The imaging modalities: 2D radiographs (images.py) and 3D CT/MR volumes (volumes.py)."""
