"""DICOM images through pydicom: grayscale, any transfer syntax pydicom's decoder plugins read.

Pixel data pass through the DICOM display pipeline, each step by pydicom's own functions:

1. decoding: uncompressed little/big endian, deflated, RLE, JPEG baseline/extended/lossless,
   JPEG-LS and JPEG 2000, through pydicom's plugins (pylibjpeg with -libjpeg, -openjpeg and -rle;
   pyjpegls; Pillow), 1 to 16 (and 32) bits, signed or unsigned;
2. modality LUT (``apply_modality_lut``): RescaleSlope/Intercept or a Modality LUT Sequence, to
   modality units (HU for CT);
3. VOI LUT (``apply_voi_lut``): the file's first window (WindowCenter/Width hold several
   alternative windows; the first is the one the modality chose as default) with its
   VOILUTFunction, or its VOI LUT Sequence. A file without either gets the 0.5-99.5 percentile
   window of its own pixels;
4. MONOCHROME1 (low values bright) is inverted after the VOI step, so in every image medweave
   caches bright means dense.

Enhanced (multi-frame) objects keep rescale and window per frame in functional groups; they are
looked up there first. A multi-frame file read as a 2D image gives its middle frame (``frame``
picks another); the volume reader (volume.py) reads all its frames.

Colour images (RGB, YBR_*, PALETTE COLOR) are refused, not converted: in an imaging index they are
screenshots, ultrasound or photographs, not radiographs, and a grey version would train the
model on something that only looks like one. So are 1-bit masks (segmentations).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medweave.errors import MedweaveError

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
PERCENTILE_WINDOW = (0.5, 99.5)  # for files without a window of their own


class Frame(NamedTuple):
    """One decoded frame: ``pixels`` float32 [rows, cols] in modality units (as stored: not yet
    inverted for MONOCHROME1), the view of the header that applies to it, and its photometric
    interpretation."""

    pixels: np.ndarray
    header: object  # a pydicom Dataset
    photometric: str


def read_header(path: Path):
    """The dataset (pixel data not yet decoded), or an error naming the file and the fault."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        ds = _read_without_meta(path)
    except Exception as err:  # truncated headers raise EOFError, struct.error, ValueError, ...
        raise MedweaveError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise MedweaveError(f"{path}: DICOM file has no PixelData; expected an image")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in GRAYSCALE:
        raise MedweaveError(
            f"{path}: PhotometricInterpretation is '{photometric or 'missing'}'; medweave reads grayscale "
            f"images ({' or '.join(GRAYSCALE)}), not colour ones (RGB, YBR, PALETTE COLOR)"
        )
    if int(ds.get("BitsAllocated", 0) or 0) == 1:
        raise MedweaveError(f"{path}: 1-bit pixel data (a mask or segmentation); expected a grayscale image")
    return ds


def _read_without_meta(path: Path):
    """Old exports lack the 128-byte preamble and file meta; pydicom reads them with force=True.
    Anything that then has no image attributes was not DICOM at all."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(path, force=True)
        if "PixelData" not in ds or "Rows" not in ds:
            raise ValueError("no DICOM preamble, file meta or image attributes")
        if "TransferSyntaxUID" not in ds.file_meta:
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian
                if implicit
                else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            )
    except Exception as err:  # random bytes make pydicom raise many types
        raise MedweaveError(f"{path}: not a readable DICOM file ({err})") from None
    return ds


def n_frames(ds) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def frame_header(ds, index: int):
    """The attributes that steer the modality and VOI LUTs for one frame: the top level, with an
    enhanced object's functional groups laid over it (shared, then the frame's own on top)."""
    from pydicom.dataset import Dataset

    view = Dataset()
    for key in (
        "PhotometricInterpretation",
        "BitsStored",
        "BitsAllocated",
        "PixelRepresentation",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "ModalityLUTSequence",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "VOILUTSequence",
        "Modality",
    ):
        if key in ds:
            view[key] = ds[key]
    for item in group_items(ds, index):
        for seq in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if seq in item and len(item[seq].value):
                for elem in item[seq].value[0]:
                    view[elem.tag] = elem
    return view


def group_items(ds, index: int) -> list:
    """An enhanced object's functional group items for one frame: shared first, then per-frame
    (so that per-frame values win when both are read in order)."""
    items = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if shared:
        items.append(shared[0])
    if per_frame and index < len(per_frame):
        items.append(per_frame[index])
    return items


def frame_value(ds, index: int, sequence: str, keyword: str):
    """``keyword`` for one frame: from its functional groups' ``sequence`` if there, else top level."""
    value = ds.get(keyword)
    for item in group_items(ds, index):
        if sequence in item and len(item[sequence].value) and keyword in item[sequence].value[0]:
            value = item[sequence].value[0].get(keyword)
    return value


def read_frames(path: Path, ds=None, index: int | None = None) -> list[Frame]:
    """Decoded frames (all, or only ``index``) in modality units, as float32."""
    from pydicom.pixels import apply_modality_lut, pixel_array

    path = Path(path)
    ds = read_header(path) if ds is None else ds
    count = n_frames(ds)
    try:
        data = pixel_array(ds, index=index) if index is not None else ds.pixel_array
    except Exception as err:  # each decoder plugin raises its own types; the file is what matters
        syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown transfer syntax")
        if "12-bit precision" in str(err) and importlib.util.find_spec("libjpeg") is None:
            raise MedweaveError(
                f"{path}: {syntax} with 12-bit samples needs the GPL-3.0 decoder pylibjpeg-libjpeg: "
                "pip install 'medweave[jpeg12]' where your licence policy allows it"
            ) from None
        raise MedweaveError(
            f"{path}: pixel data cannot be decoded as {syntax} ({type(err).__name__}: {err}); expected "
            "complete image data (is the file truncated or damaged?)"
        ) from None
    data = data.reshape((1 if index is not None else count, *data.shape[-2:]))
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    frames = []
    for k, plane in enumerate(data):
        header = frame_header(ds, index if index is not None else k)
        try:
            values = apply_modality_lut(plane, header)
        except Exception as err:  # a malformed Modality LUT Sequence or rescale value
            raise MedweaveError(
                f"{path}: modality LUT (RescaleSlope/Intercept or Modality LUT Sequence) cannot be "
                f"applied ({err})"
            ) from None
        frames.append(Frame(np.asarray(values, np.float32), header, photometric))
    return frames


def read_image(path: Path, frame: int | None = None) -> np.ndarray:
    """A float32 [rows, cols] image in [0, 1] as a reader would see it: modality LUT, the file's
    VOI (or a percentile window), MONOCHROME1 inverted, so bright means dense.

    ``frame``: which frame of a multi-frame file (default: the middle one)."""
    path = Path(path)
    ds = read_header(path)
    count = n_frames(ds)
    index = count // 2 if frame is None else frame
    if not 0 <= index < count:
        raise MedweaveError(f"{path}: frame {index} requested; the file has {count} frame(s)")
    (pixels, header, photometric) = read_frames(path, ds, index if count > 1 else None)[0]
    scaled = display(pixels, header, path)
    return 1.0 - scaled if photometric == "MONOCHROME1" else scaled


def display(pixels: np.ndarray, header, path: Path) -> np.ndarray:
    """Modality values -> [0, 1] through the file's VOI LUT or first window (else percentiles)."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in header or ("WindowCenter" in header and "WindowWidth" in header):
        try:
            if "VOILUTSequence" in header:
                out = apply_voi_lut(np.round(pixels).astype(np.int64), header, index=0)
                lo, hi = 0.0, float(2 ** int(header.VOILUTSequence[0].LUTDescriptor[2]) - 1)
            else:
                out = apply_voi_lut(pixels, header, index=0, prefer_lut=False)
                # The window's output range: send values far outside it through the same function.
                lo, hi = apply_voi_lut(np.array([-1e12, 1e12]), header, index=0, prefer_lut=False)
            scaled = (np.asarray(out, np.float64) - lo) / max(float(hi - lo), 1e-6)
            return np.clip(scaled, 0, 1).astype(np.float32)
        except Exception as err:  # a zero/negative width, an unknown VOILUTFunction, a bad LUT
            raise MedweaveError(f"{path}: VOI LUT / window cannot be applied ({err})") from None
    lo, hi = (float(v) for v in np.percentile(pixels, PERCENTILE_WINDOW))
    return np.clip((pixels - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
