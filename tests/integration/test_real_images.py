"""Imaging as scanners write it, through preparation, validation, training and evaluation.

- A copy of the tiny sandbox cohort whose radiographs are replaced by real public DICOM files (CR
  MONOCHROME1 chest/leg radiographs, MR and CT slices; JPEG 2000, JPEG lossless, RLE, uncompressed)
  goes through medweave-validate, a smoke training run with [ehr_codes, image] and evaluation.
- Before/after PNGs (raw decoded file beside the cached image) for a MONOCHROME1 and a MONOCHROME2
  image, with checks that catch inversion and clipping. They go to a folder under tmp_path and,
  when MEDWEAVE_TEST_ARTIFACTS is set, to that folder too, for a person to look at.
- A CT volume as a DICOM series (file names shuffled) and as NIfTI give the same cached volume; a
  smoke training run with [ehr_codes, volume] works.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data.prepare import PrepareConfig, prepare
from medweave.data.readers import dicom
from medweave.data.store import open_arrays
from tests.unit.test_dicom_readers import real_files

# Real grayscale files a PACS would hold under CR/DX/MR/CT; the first few are the ones the PNG test
# looks at, the small ones repeat so the cohort stays quick to prepare.
FIRST = ["RG1_UNCR.dcm", "MR2_UNCR.dcm", "RG1_J2KR.dcm", "RG3_J2KI.dcm", "693_J2KR.dcm"]
REPEAT = [
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "bad_sequence.dcm",  # CT, JPEG lossless, two windows
    "explicit_VR-UN.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "emri_small_jpeg_2k_lossless.dcm",  # multi-frame MR: its middle frame
    "MR_small.dcm",
]
DX_TWIN = "RG1_as_MONOCHROME2.dcm"  # RG1 rewritten as a MONOCHROME2 DX: must cache identically

REAL = ("CR", "DX", "MR", "CT")  # the real files: radiographs and single CT/MR slices, read as 2D images


def monochrome2_twin(source: Path, out: Path) -> None:
    """The same radiograph stored the other way round: stored' = max - stored, MONOCHROME2, the
    window mirrored. A reader that inverts correctly caches both identically."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(source)
    top = 2 ** int(ds.BitsStored) - 1
    ds.PixelData = (top - ds.pixel_array.astype(np.int32)).astype(np.uint16).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Modality = "DX"
    ds.WindowCenter = top - float(ds.WindowCenter) + 1  # pydicom's LINEAR window: center - 0.5
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)


@pytest.fixture(scope="module")
def real_cohort(tiny_cohort, tmp_path_factory):
    """The tiny cohort with each radiograph replaced by a copy of a real file; index modality set to
    the file's own (CR, DX, MR, CT)."""
    import pydicom

    files = real_files()
    root = shutil.copytree(tiny_cohort, tmp_path_factory.mktemp("real") / "cohort")
    index = pq.read_table(root / c.IMAGING_INDEX).to_pandas()
    shutil.rmtree(root / c.IMAGING_DIR / "cr")
    (root / c.IMAGING_DIR / "real").mkdir()
    names = FIRST + [DX_TWIN] + REPEAT * len(index)
    chosen, modality = [], []
    for k in range(len(index)):
        name = names[k]
        target = root / c.IMAGING_DIR / "real" / f"{k:03d}_{name}"
        if name == DX_TWIN:
            monochrome2_twin(files["RG1_UNCR.dcm"], target)
        else:
            shutil.copyfile(files[name], target)
        chosen.append(f"real/{target.name}")
        modality.append(str(pydicom.dcmread(target, stop_before_pixels=True).Modality))
    index["path"], index["modality"] = chosen, modality
    assert set(modality) == {"CR", "DX", "MR", "CT"}
    table = pa.Table.from_pandas(index, preserve_index=False).cast(c.IMAGING_SCHEMA)
    pq.write_table(table, root / c.IMAGING_INDEX)
    return root


def _artifact_dirs(tmp_path) -> list[Path]:
    dirs = [tmp_path / "before_after"]
    if os.environ.get("MEDWEAVE_TEST_ARTIFACTS"):
        dirs.append(Path(os.environ["MEDWEAVE_TEST_ARTIFACTS"]) / "imaging_before_after")
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True)[0, 0].numpy()


@pytest.mark.slow
def test_before_after_pngs_catch_inversion_and_clipping(real_cohort, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 128
    out = prepare(
        real_cohort,
        tmp_path / "cache",
        PrepareConfig(task="cvd_onset_1y", modalities=("image",), image_size=size, image_modalities=REAL),
    )
    subjects = np.load(out / "subjects.npz")
    cache = np.asarray(open_arrays(out)["image"])
    index = pq.read_table(real_cohort / c.IMAGING_INDEX).to_pandas()
    cached = {}
    for name in ("RG1_UNCR.dcm", "MR2_UNCR.dcm", DX_TWIN):
        row = index[index.path.str.endswith(name)].iloc[0]
        k = int(np.searchsorted(subjects["subject_id"], row.subject_id))
        assert subjects["subject_id"][k] == row.subject_id and subjects["present_image"][k]
        cached[name] = (real_cohort / c.IMAGING_DIR / row.path, cache[k, 0].astype(np.float32))

    figure, axes = plt.subplots(len(cached), 2, figsize=(7, 3.4 * len(cached)))
    for (name, (path, image)), (left, right) in zip(cached.items(), axes, strict=True):
        frame = dicom.read_frames(path)[0]
        raw = frame.pixels  # modality values as stored: MONOCHROME1 still has dense = dark
        left.imshow(raw, cmap="gray")
        left.set_title(f"{name}\nraw decoded ({frame.photometric})", fontsize=8)
        right.imshow(image, cmap="gray", vmin=0, vmax=1)
        right.set_title(f"cached {size}x{size} (bright = dense)", fontsize=8)
        for ax in (left, right):
            ax.axis("off")

        as_displayed = _resize(-raw if frame.photometric == "MONOCHROME1" else raw, size)
        r = np.corrcoef(as_displayed.ravel(), image.ravel())[0, 1]
        assert r > 0.9, (name, r)  # same picture, same polarity as a viewer shows it
        # Clipping that loses information: pixels the window saturates although the file holds
        # more there (MR's empty background is 0 in the file already: not a loss).
        spread = (as_displayed - as_displayed.min()) / np.ptp(as_displayed)
        flat = (spread <= 2e-3) | (spread >= 1 - 2e-3)
        clipped = ((image <= 1e-3) | (image >= 1 - 1e-3)) & ~flat
        assert clipped.mean() < 0.01, (name, clipped.mean())
    figure.tight_layout()
    for folder in _artifact_dirs(tmp_path):
        figure.savefig(folder / "radiographs_before_after.png", dpi=90)
    plt.close(figure)
    assert (tmp_path / "before_after" / "radiographs_before_after.png").stat().st_size > 10_000

    # Bright = dense on the chest radiograph: the spine and mediastinum (centre strip) are brighter
    # than the lung fields in the cache, while the MONOCHROME1 file stores them darker.
    path, chest = cached["RG1_UNCR.dcm"]
    centre = (slice(int(0.3 * size), int(0.7 * size)), slice(int(0.46 * size), int(0.54 * size)))
    lungs = [
        (slice(int(0.3 * size), int(0.6 * size)), slice(int(0.2 * size), int(0.35 * size))),
        (slice(int(0.3 * size), int(0.6 * size)), slice(int(0.65 * size), int(0.8 * size))),
    ]
    assert chest[centre].mean() > max(chest[lung].mean() for lung in lungs) + 0.1
    stored = _resize(dicom.read_frames(path)[0].pixels, size)
    assert stored[centre].mean() < min(stored[lung].mean() for lung in lungs)
    # The same radiograph stored as MONOCHROME2 caches to the same image.
    np.testing.assert_allclose(cached[DX_TWIN][1], chest, atol=5e-3)


@pytest.mark.slow
def test_real_dicom_cohort_validates_trains_and_evaluates(real_cohort, tmp_path):
    from medweave.cli.eval import evaluate
    from medweave.cli.train import train
    from tests.conftest import compose_run
    from tests.integration.test_train_eval import run_cli

    proc = run_cli("medweave.cli.validate", f"data.root={real_cohort}", cwd=tmp_path)
    assert proc.returncode == 0 and "OK:" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]

    overrides = ["debug=smoke", f"data.root={real_cohort}", "data.modalities=[ehr_codes,image]", "logger=csv"]
    overrides.append(f"data.image_modalities=[{','.join(REAL)}]")
    value = train(compose_run("train", overrides, tmp_path / "logs", tmp_path / "run"))
    assert 0.0 <= value <= 1.0
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    eval_cfg = compose_run(
        "eval",
        [f"ckpt_path={ckpt}", f"data.root={real_cohort}", "logger=csv"],
        tmp_path / "logs",
        tmp_path / "eval",
    )
    results = evaluate(eval_cfg)
    assert 0.0 <= results["test/auroc"] <= 1.0


@pytest.fixture(scope="module")
def volume_cohort(tmp_path_factory):
    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    return generate_cohort(
        tmp_path_factory.mktemp("vol") / "cohort",
        SandboxConfig(
            n_subjects=40, n_variants=30, image_size=16, volumes=True, volume_shape=(12, 24, 24), seed=5
        ),
    )


def _keep_rows(root: Path, keep) -> None:
    index = pq.read_table(root / c.IMAGING_INDEX).to_pandas()
    table = pa.Table.from_pandas(index[keep(index)], preserve_index=False).cast(c.IMAGING_SCHEMA)
    pq.write_table(table, root / c.IMAGING_INDEX)


@pytest.mark.slow
def test_dicom_series_and_nifti_give_the_same_cached_volume(volume_cohort, tmp_path):
    series = shutil.copytree(volume_cohort, tmp_path / "series")
    nifti = shutil.copytree(volume_cohort, tmp_path / "nifti")
    _keep_rows(series, lambda i: ~i.path.str.endswith(".nii.gz"))
    _keep_rows(nifti, lambda i: (i.modality != "CT") | i.path.str.endswith(".nii.gz"))
    rng = np.random.default_rng(0)
    for folder in (series / c.IMAGING_DIR / "ct").iterdir():  # new, random file names
        for file in rng.permutation(sorted(folder.iterdir())):
            file.rename(folder / f"{uuid.UUID(int=int(rng.integers(2**62))).hex}.dcm")
    cfg = PrepareConfig(task="cvd_onset_1y", modalities=("volume",), volume={"size": [12, 32, 32]})
    a, b = prepare(series, tmp_path / "c1", cfg), prepare(nifti, tmp_path / "c2", cfg)
    sa, sb = np.load(a / "subjects.npz"), np.load(b / "subjects.npz")
    np.testing.assert_array_equal(sa["present_volume"], sb["present_volume"])
    assert sa["present_volume"].sum() >= 10
    va, vb = np.asarray(open_arrays(a)["volume"]), np.asarray(open_arrays(b)["volume"])
    assert va.shape == (40, 1, 12, 32, 32) and va.dtype == np.float16
    np.testing.assert_array_equal(va, vb)
    present = va[sa["present_volume"]]
    assert present.max() > 0.5 and (present < 0.15).mean() > 0.2  # bone and air/lung in the CT window
    assert not va[~sa["present_volume"]].any()


@pytest.mark.slow
def test_smoke_training_on_volumes(volume_cohort, tmp_path):
    from medweave.cli.eval import evaluate
    from medweave.cli.train import train
    from tests.conftest import compose_run

    overrides = [
        "debug=smoke",
        f"data.root={volume_cohort}",
        "data.modalities=[ehr_codes,volume]",
        "data.volume.size=[12,32,32]",
        "logger=csv",
    ]
    value = train(compose_run("train", overrides, tmp_path / "logs", tmp_path / "run"))
    assert 0.0 <= value <= 1.0
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    eval_cfg = compose_run(
        "eval",
        [f"ckpt_path={ckpt}", f"data.root={volume_cohort}", "logger=csv"],
        tmp_path / "logs",
        tmp_path / "eval",
    )
    assert 0.0 <= evaluate(eval_cfg)["test/auroc"] <= 1.0  # the checkpoint's data.volume options come back


def test_validate_reports_imaging_faults_by_row(volume_cohort, tmp_path):
    """medweave-validate's imaging checks: headers only, every kind of fault with its row."""
    from pydicom.data import get_testdata_file

    from medweave.data.validate import validate_cohort

    root = shutil.copytree(volume_cohort, tmp_path / "cohort")
    assert validate_cohort(root).ok, [str(p) for p in validate_cohort(root).problems]
    index = pq.read_table(root / c.IMAGING_INDEX).to_pandas()
    cr = index.index[index.modality == "CR"]
    series = index.index[(index.modality == "CT") & ~index.path.str.endswith(".gz")]
    shutil.copyfile(get_testdata_file("SC_rgb_rle.dcm"), root / c.IMAGING_DIR / index.path[cr[0]])
    from tests.integration.bad_inputs.imaging import remove_middle_slice

    remove_middle_slice(root / c.IMAGING_DIR / index.path[series[0]])
    index.loc[cr[1], "modality"] = "XR"
    pq.write_table(
        pa.Table.from_pandas(index, preserve_index=False).cast(c.IMAGING_SCHEMA), root / c.IMAGING_INDEX
    )
    found = [str(p) for p in validate_cohort(root).problems]
    head = "imaging/index.parquet: row"
    expected = [
        f"{head} {cr[1]}, field modality: modality is not one of",
        f"{head} {cr[0]}, field path: not a readable DICOM image (or series) (first: imaging/",
        f"{head} {series[0]}, field path: not a readable DICOM image (or series) (first: imaging/ct/",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in found), (text, found)
    assert any("PhotometricInterpretation is 'RGB'" in p for p in found), found
    assert any("slices are unevenly spaced" in p for p in found), found
    assert len(found) == 3, found
