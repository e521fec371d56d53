"""The imaging modalities: 2D radiographs (images.py) and 3D CT/MR volumes (volumes.py), both
chosen from imaging/index.parquet (index.py) and read by readers/dicom.py and readers/volume.py."""

from medweave.data.imaging.images import prepare_images
from medweave.data.imaging.index import ImagingIndex
from medweave.data.imaging.volumes import DEFAULTS, prepare_volumes, volume_options

__all__ = ["DEFAULTS", "ImagingIndex", "prepare_images", "prepare_volumes", "volume_options"]
