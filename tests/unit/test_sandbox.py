import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.sandbox.generate import SandboxConfig, generate_cohort


def test_layout_follows_contract(tiny_cohort):
    for rel in (
        c.DATASET_METADATA,
        c.CODES_METADATA,
        c.SUBJECT_SPLITS,
        c.IMAGING_INDEX,
        c.VARIANTS_VCF,
        c.VARIANTS_VCF + ".tbi",
        "labels/cvd_onset_1y.parquet",
    ):
        assert (tiny_cohort / rel).exists(), rel
    events = pq.read_table(next((tiny_cohort / "data").glob("*.parquet")))
    assert events.schema.equals(c.EVENTS_SCHEMA)
    import meds

    meds.DataSchema.validate(events)
    codes = set(events.column("code").to_pylist())
    assert {"MEDS_BIRTH", "NPU//NPU27300", "ATC//A10BA02"} <= codes
    assert any(code.startswith("ICD10//") for code in codes)
    notes = events.filter(
        pq.read_table(next((tiny_cohort / "data").glob("*.parquet")))
        .column("code")
        .cast("string")
        .to_pandas()
        .str.startswith("NOTE//")
        .values
    )
    assert notes.num_rows > 0 and notes.column("text_value").null_count == 0
    labs = events.filter(events.column("code").to_pandas().eq("NPU//NPU27300").values)
    assert labs.column("numeric_value").null_count == 0


def test_each_subject_in_one_split_and_labelled(tiny_cohort):
    splits = pq.read_table(tiny_cohort / c.SUBJECT_SPLITS).to_pandas()
    labels = pq.read_table(tiny_cohort / "labels/cvd_onset_1y.parquet").to_pandas()
    assert splits.subject_id.is_unique
    assert set(splits.split) == set(c.SPLITS)
    assert set(labels.subject_id) == set(splits.subject_id)
    assert 0.05 < labels.boolean_value.mean() < 0.5


def test_metadata_reports_oracle(tiny_cohort):
    meta = json.loads((tiny_cohort / c.DATASET_METADATA).read_text())
    oracle = meta["medweave"]["oracle"]["cvd_onset_1y"]
    assert set(oracle["auroc"]) <= set(c.SPLITS)
    assert all(0.5 < v <= 1 for v in oracle["auroc"].values())


def test_vcf_is_readable_by_htslib(tiny_cohort):
    import pysam

    vcf = pysam.VariantFile(str(tiny_cohort / c.VARIANTS_VCF))
    samples = list(vcf.header.samples)
    subjects = set(pq.read_table(tiny_cohort / c.SUBJECT_SPLITS).column("subject_id").to_pylist())
    assert samples and {int(s) for s in samples} <= subjects
    records = list(vcf.fetch("chr1", 0, 10**9))  # tabix index works
    assert len(records) == 200
    gts = {rec.samples[samples[0]]["GT"] for rec in records}
    assert gts <= {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_dicom_readable_by_pydicom_and_monai(tiny_cohort):
    import pydicom
    from monai.transforms import LoadImage

    index = pq.read_table(tiny_cohort / c.IMAGING_INDEX).to_pandas()
    path = tiny_cohort / c.IMAGING_DIR / index.path.iloc[0]
    ds = pydicom.dcmread(path)
    assert ds.Modality == "CR" and ds.BitsStored == 12 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.pixel_array.shape == (64, 64)
    image = LoadImage(reader="PydicomReader", image_only=True)(str(path))
    assert tuple(image.shape[-2:]) == (64, 64)


def test_same_seed_same_cohort_other_seed_differs(tmp_path):
    def events(seed, name):
        root = generate_cohort(
            tmp_path / name, SandboxConfig(n_subjects=30, n_variants=50, image_size=32, seed=seed)
        )
        return pq.read_table(next((root / "data").glob("*.parquet")))

    a, b, other = events(5, "a"), events(5, "b"), events(6, "c")
    assert a.equals(b)
    assert not a.equals(other)


def test_missing_rates_are_honoured(tmp_path):
    root = generate_cohort(
        tmp_path / "m",
        SandboxConfig(
            n_subjects=200, n_variants=20, image_size=32, missing={"text": 0.0, "image": 0.9, "genomics": 0.5}
        ),
    )
    n_images = pq.read_table(root / c.IMAGING_INDEX).num_rows
    assert 5 <= n_images <= 40  # about 20 of 200
    import pysam

    n_genomes = len(pysam.VariantFile(str(root / c.VARIANTS_VCF)).header.samples)
    assert 70 <= n_genomes <= 130


def test_refuses_to_overwrite_and_bad_rates(tmp_path):
    from medweave.errors import MedweaveError

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(MedweaveError, match="not empty"):
        generate_cohort(tmp_path / "full", SandboxConfig(n_subjects=10))
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(MedweaveError, match="missing.image=1.5"):
        generate_cohort(tmp_path / "bad", SandboxConfig(missing={"image": 1.5}))
    assert not list(tmp_path.glob(".bad*")) and not (tmp_path / "bad").exists()


def test_modalities_carry_signal(tmp_path):
    """Each latent factor shows up in its modality: lab values follow m, lesions follow l."""
    root = generate_cohort(tmp_path / "s", SandboxConfig(n_subjects=150, n_variants=20, image_size=64))
    truth = pq.read_table(root / c.GROUND_TRUTH).to_pandas().set_index("subject_id")
    events = pq.read_table(next((root / "data").glob("*.parquet"))).to_pandas()
    hba1c = events[events.code == "NPU//NPU27300"].groupby("subject_id").numeric_value.mean()
    assert np.corrcoef(hba1c, truth.loc[hba1c.index, "metabolic"])[0, 1] > 0.5


def test_quadrature_matches_monte_carlo():
    from medweave.sandbox.latent import sigmoid
    from medweave.sandbox.oracle import _expected_sigmoid

    rng = np.random.default_rng(0)
    mean = np.array([-2.0, 0.0, 1.5])
    mc = sigmoid(mean[:, None] + 1.3 * rng.standard_normal((3, 200_000))).mean(1)
    np.testing.assert_allclose(_expected_sigmoid(mean, 1.3), mc, atol=3e-3)


def test_each_modality_alone_falls_short_of_the_oracle(tmp_path):
    root = generate_cohort(tmp_path / "o", SandboxConfig(n_subjects=1500, n_variants=20, image_size=16))
    oracle = json.loads((root / c.DATASET_METADATA).read_text())["medweave"]["oracle"]["cvd_onset_1y"]
    full = oracle["auroc"]["train"]
    alone = {m: v["train"] for m, v in oracle["auroc_by_modality"].items()}
    assert set(alone) == {"ehr_codes", "text", "image", "genomics"}
    assert all(0.55 < v < full - 0.1 for v in alone.values()), (full, alone)
