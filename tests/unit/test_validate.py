"""medweave-validate passes sandbox output and reports every planted fault with file and row."""

import shutil
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data.validate import validate_cohort


def test_sandbox_cohort_passes(tiny_cohort):
    report = validate_cohort(tiny_cohort)
    assert report.ok, [str(p) for p in report.problems]
    assert report.counts["subjects"] == 120 and report.counts["events"] > 0


@pytest.fixture
def broken(tiny_cohort, tmp_path):
    """A copy with one fault planted in each file."""
    root = shutil.copytree(tiny_cohort, tmp_path / "broken")
    splits = pq.read_table(root / c.SUBJECT_SPLITS).to_pandas()
    n_splits = len(splits)
    splits.loc[1, "split"] = "validation"
    splits = pd.concat([splits, splits.iloc[[5]]])  # the last row repeats row 5
    pq.write_table(pa.Table.from_pandas(splits, preserve_index=False), root / c.SUBJECT_SPLITS)

    shard = next((root / "data").glob("*.parquet"))
    events = pq.read_table(shard)
    stranger = events.slice(3, 1).set_column(0, "subject_id", pa.array([7], pa.int64()))
    pq.write_table(pa.concat_tables([events, stranger]), shard)
    (root / "data" / "extra.parquet").write_bytes(b"PAR1 truncated")

    labels = pq.read_table(root / "labels/cvd_onset_1y.parquet")
    pq.write_table(labels.drop_columns(["prediction_time"]), root / "labels/cvd_onset_1y.parquet")
    other = labels.to_pandas()
    other["boolean_value"] = other["boolean_value"].astype(object)
    other.loc[4, "boolean_value"] = None  # a label without a value
    other.loc[6, "subject_id"] = 8  # a subject no split knows
    pq.write_table(pa.Table.from_pandas(other, preserve_index=False), root / "labels/other_task.parquet")

    index = pq.read_table(root / c.IMAGING_INDEX)
    paths = index.column("path").to_pylist()
    (root / c.IMAGING_DIR / paths[1]).unlink()
    (root / c.IMAGING_DIR / paths[2]).write_text("not a dicom")
    (root / (c.VARIANTS_VCF + ".tbi")).unlink()
    return root, len(events), n_splits


def test_every_planted_fault_is_reported(broken):
    root, n_events, n_splits = broken
    report = validate_cohort(root)
    found = {str(p) for p in report.problems}
    expected = [
        "metadata/subject_splits.parquet: row 1, field split: 'validation' is not a MEDS split",
        f"metadata/subject_splits.parquet: row {n_splits}, field subject_id: subject_id already listed",
        f"data/0.parquet: row {n_events}, field subject_id: subject has no split",
        "data/extra.parquet: file: not readable as parquet",
        "labels/cvd_onset_1y.parquet: column prediction_time: missing",
        "labels/other_task.parquet: row 4, field boolean_value/integer_value/float_value/categ",
        "labels/other_task.parquet: row 6, field subject_id: subject has no split",
        "imaging/index.parquet: row 1, field path: image file does not exist",
        "imaging/index.parquet: row 2, field path: not a readable DICOM image",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in found), (text, sorted(found))
    assert len(report.problems) == len(expected)
    assert report.counts["vcf_read_by_streaming"] == 1  # no index: read anyway, and said so


def test_cli_exit_status(tiny_cohort, broken, tmp_path):
    def run(root):
        return subprocess.run(
            [sys.executable, "-m", "medweave.cli.validate", f"data.root={root}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )

    good = run(tiny_cohort)
    assert good.returncode == 0 and good.stdout.startswith("OK:")
    bad = run(broken[0])
    assert bad.returncode == 1
    assert "9 problem(s)" in bad.stdout and "imaging/index.parquet: row 1" in bad.stdout
    assert not any(
        str(s) in bad.stdout
        for s in pq.read_table(tiny_cohort / c.SUBJECT_SPLITS).column("subject_id").to_pylist()
    )  # rows, never subject IDs


def test_survival_labels_volumes_and_expression_are_checked(tmp_path):
    """Faults in the files a sandbox writes only on request: CT series and NIfTI, expression."""
    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    settings = dict(n_subjects=30, n_variants=50, image_size=16, volumes=True, volume_shape=(4, 8, 8))
    root = generate_cohort(
        tmp_path / "v", SandboxConfig(**settings, expression_genes=4, missing={"image": 0.0})
    )
    assert validate_cohort(root).ok, [str(p) for p in validate_cohort(root).problems]

    survival = pq.read_table(root / "labels/t1d_survival.parquet").to_pandas()
    survival.loc[3, "float_value"] = -5.0
    survival["float_value"] = survival["float_value"].astype("float32")
    pq.write_table(pa.Table.from_pandas(survival, preserve_index=False), root / "labels/t1d_survival.parquet")
    index = pq.read_table(root / c.IMAGING_INDEX).to_pandas()
    series_row = int(index.index[(index.modality == "CT") & ~index.path.str.endswith(".gz")][0])
    nifti_row = int(index.index[index.path.str.endswith(".nii.gz")][1])
    next((root / "imaging" / index.path[series_row]).iterdir()).write_bytes(b"\x00" * 10)
    (root / "imaging" / index.path[nifti_row]).write_bytes(b"not gzip")
    expression = pq.read_table(root / c.EXPRESSION)
    pq.write_table(pa.concat_tables([expression, expression.slice(2, 1)]), root / c.EXPRESSION)

    found = [str(p) for p in validate_cohort(root).problems]
    expected = [
        "labels/t1d_survival.parquet: row 3, field float_value: days to event or censoring must be",
        f"imaging/index.parquet: row {series_row}, field path: not a readable DICOM image (or series)",
        f"imaging/index.parquet: row {nifti_row}, field path: not a readable NIfTI volume",
        f"genomics/expression.parquet: row {expression.num_rows}, field subject_id: subject_id already",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in found), (text, found)
    assert len(found) == len(expected), found
