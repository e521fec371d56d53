"""Broken imaging inputs as PACS exports come: damaged DICOM files, wrong index rows, series that
are not one stack, NIfTI files that are not volumes.

Each case breaks the image (or CT volume) of one labelled subject. Strict: preparation stops naming
imaging/index.parquet, the row and field, the image file and what was expected. Lenient: that
subject is left without the modality (present=False) and the others keep theirs. An image dated
after prediction_time is ignored by design, not an error, so it is not a case here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data import contract as c
from tests.integration.bad_inputs import Case, prepare_step

TASK = "cvd_onset_1y"
INDEX = c.IMAGING_INDEX


def _index(cohort: Path) -> pd.DataFrame:
    return pq.read_table(cohort / INDEX).to_pandas()


def _write_index(cohort: Path, index: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(index, preserve_index=False).cast(c.IMAGING_SCHEMA), cohort / INDEX)


def _target_row(cohort: Path, index: pd.DataFrame) -> int:
    """An index row that preparation reads: a labelled subject's only radiograph."""
    labels = pq.read_table(cohort / c.LABELS_DIR / f"{TASK}.parquet").to_pandas()
    cr = index[(index.modality == "CR") & index.subject_id.isin(labels.subject_id)]
    return int(cr.index[0])


def _remember(work: Path, subject_id: int, modality: str, present: int) -> None:
    (work / "facts.json").write_text(
        json.dumps({"subject": subject_id, "modality": modality, "present": present})
    )


def _subject_left_out(cache) -> None:
    """check_lenient: the broken subject has no such modality, the other subjects kept theirs."""
    facts = json.loads((Path(cache).parent.parent / "facts.json").read_text())
    s = np.load(Path(cache) / "subjects.npz")
    present = s[f"present_{facts['modality']}"]
    k = int(np.searchsorted(s["subject_id"], facts["subject"]))
    assert s["subject_id"][k] == facts["subject"] and not present[k]
    assert present.sum() == facts["present"] - 1, (present.sum(), facts["present"])


def _image_case(break_file):
    """make(): break the radiograph file of one subject with ``break_file(path) -> None``."""

    def make(cohort: Path, work: Path):
        index = _index(cohort)
        row = _target_row(cohort, index)
        labels = pq.read_table(cohort / c.LABELS_DIR / f"{TASK}.parquet").to_pandas()
        present = index[
            (index.modality == "CR") & index.subject_id.isin(labels.subject_id)
        ].subject_id.nunique()
        _remember(work, int(index.subject_id[row]), "image", int(present))
        break_file(cohort, index, row)
        return prepare_step(cohort, work, modalities=("image",), task=TASK)

    return make


def _truncate(cohort, index, row):
    path = cohort / c.IMAGING_DIR / index.path[row]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_pixels(cohort, index, row):
    import pydicom

    path = cohort / c.IMAGING_DIR / index.path[row]
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)


def _not_dicom(cohort, index, row):
    (cohort / c.IMAGING_DIR / index.path[row]).write_text("report: chest radiograph, no findings\n")


def _colour(cohort, index, row):
    from pydicom.data import get_testdata_file

    shutil.copyfile(get_testdata_file("SC_rgb_rle.dcm"), cohort / c.IMAGING_DIR / index.path[row])


def _missing_path(cohort, index, row):
    index.loc[row, "path"] = "cr/not_there.dcm"
    _write_index(cohort, index)


def _unknown_modality(cohort, index, row):
    index.loc[row, "modality"] = "XR"
    _write_index(cohort, index)


def _image_expect(field: str, *parts: str) -> tuple[str, ...]:
    """The index file, a row number and the field, then the image file and the reason."""
    return (f"{INDEX}: row ", f", {field}: ", *parts)


def _volume_case(break_volume, kind: str = "series"):
    """make(): give three labelled subjects a small CT (series or NIfTI, dated before their CR),
    then break the first one's with ``break_volume(path)``."""

    def make(cohort: Path, work: Path):
        from medweave.sandbox import volumes

        index = _index(cohort)
        labels = pq.read_table(cohort / c.LABELS_DIR / f"{TASK}.parquet").to_pandas()
        cr = index[(index.modality == "CR") & index.subject_id.isin(labels.subject_id)].iloc[:3]
        rng = np.random.default_rng(0)
        rows = []
        for k, (_, image) in enumerate(cr.iterrows()):
            hu = volumes.draw_volume(0.0, (6, 12, 12), rng)
            name = f"ct_{kind}/{k}" + (".nii.gz" if kind == "nifti" else "")
            if kind == "nifti":
                volumes.write_nifti(cohort / c.IMAGING_DIR / name, hu)
            else:
                when = np.datetime64(image.time.to_datetime64(), "s")
                volumes.write_dicom_series(cohort / c.IMAGING_DIR / name, hu, 0, when, k, rng)
            rows.append({**image.to_dict(), "path": name, "modality": "CT", "view": "AXIAL"})
            rows[-1]["time"] = image.time - pd.Timedelta(days=1)
        index = pd.concat([index, pd.DataFrame(rows)], ignore_index=True)
        _write_index(cohort, index)
        _remember(work, int(cr.subject_id.iloc[0]), "volume", 3)
        break_volume(cohort / c.IMAGING_DIR / rows[0]["path"])
        return prepare_step(cohort, work, modalities=("volume",), task=TASK, volume={"size": [4, 8, 8]})

    return make


def _duplicate_slice(folder: Path):
    first = sorted(folder.iterdir())[0]
    shutil.copyfile(first, folder / "copy_of_a_slice.dcm")


def remove_middle_slice(folder: Path):
    import pydicom

    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    files[2].unlink()


def _two_series(folder: Path):
    import pydicom
    from pydicom.uid import generate_uid

    path = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)


def _nifti_2d(path: Path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((12, 12), np.int16), np.eye(4)), path)


def _nifti_corrupt(path: Path):
    path.write_bytes(path.read_bytes()[:60])


def _row_of_volume(expect_tail: str) -> tuple[str, ...]:
    return (f"{INDEX}: row ", ", field path: ", expect_tail)


CASES = [
    Case(
        "truncated_dicom",
        _image_case(_truncate),
        _image_expect("field path", "cr/", ".dcm: pixel data cannot be decoded", "truncated"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "dicom_without_pixels",
        _image_case(_drop_pixels),
        _image_expect("field path", "DICOM file has no PixelData; expected an image"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "text_file_named_dcm",
        _image_case(_not_dicom),
        _image_expect("field path", ".dcm: not a readable DICOM file"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "colour_dicom_in_radiograph_row",
        _image_case(_colour),
        _image_expect("field path", "PhotometricInterpretation is 'RGB'", "grayscale"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "index_path_does_not_exist",
        _image_case(_missing_path),
        _image_expect("field path", "cr/not_there.dcm: does not exist; expected a DICOM file"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "index_modality_unknown",
        _image_case(_unknown_modality),
        _image_expect("field modality", "'XR' is not an imaging modality medweave reads", "'CR'"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "series_two_slices_at_one_position",
        _volume_case(_duplicate_slice),
        _row_of_volume("ct_series/0: two slices share a position"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "series_missing_slice",
        _volume_case(remove_middle_slice),
        _row_of_volume("ct_series/0: slices are unevenly spaced"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "series_folder_mixes_two_series",
        _volume_case(_two_series),
        _row_of_volume("ct_series/0: holds slices of 2 series"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "nifti_2d",
        _volume_case(_nifti_2d, kind="nifti"),
        _row_of_volume("0.nii.gz: expected a 3D volume"),
        check_lenient=_subject_left_out,
    ),
    Case(
        "nifti_corrupt",
        _volume_case(_nifti_corrupt, kind="nifti"),
        _row_of_volume("0.nii.gz: not a readable NIfTI volume"),
        check_lenient=_subject_left_out,
    ),
]
