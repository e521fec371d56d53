import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.sandbox.generate import SandboxConfig, generate_cohort
from medweave.sandbox.latent import Disease


def test_layout_follows_contract(tiny_cohort):
    for rel in (
        c.DATASET_METADATA,
        c.CODES_METADATA,
        c.SUBJECT_SPLITS,
        c.IMAGING_INDEX,
        c.VARIANTS_VCF,
        c.VARIANTS_VCF + ".tbi",
        "labels/cvd_onset_1y.parquet",
        "labels/cvd_survival.parquet",
        "labels/t1d_onset_1y.parquet",
        "labels/t1d_survival.parquet",
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


def _digests(root):
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "dataset.json"  # holds the creation time
    }


def test_output_is_the_same_whatever_the_sharding(tmp_path):
    """Byte for byte: one process, one shard vs two processes, shards of 7 subjects."""
    settings = dict(n_subjects=40, n_variants=60, image_size=16, volumes=True, volume_shape=(4, 8, 8))
    settings["expression_genes"] = 5
    one = generate_cohort(tmp_path / "one", SandboxConfig(**settings, workers=1))
    many = generate_cohort(tmp_path / "many", SandboxConfig(**settings, workers=2, shard_size=7))
    a, b = _digests(one), _digests(many)
    assert a == b
    assert any(k.startswith("imaging/ct/") for k in a) and "genomics/expression.parquet" in a
    assert not (one / "parts").exists()


def test_file_and_row_group_boundaries_do_not_follow_shards(tmp_path, monkeypatch):
    """With 13 subjects per events file and 50-row groups, boundaries fall inside shards."""
    from medweave.sandbox import assemble

    monkeypatch.setattr(assemble, "SUBJECTS_PER_EVENTS_FILE", 13)
    monkeypatch.setattr(assemble, "ROW_GROUP_ROWS", 50)
    settings = dict(n_subjects=40, n_variants=60, image_size=8)
    one = generate_cohort(tmp_path / "one", SandboxConfig(**settings, workers=1))
    many = generate_cohort(tmp_path / "many", SandboxConfig(**settings, workers=2, shard_size=6))
    assert _digests(one) == _digests(many)
    files = sorted((one / "data").glob("*.parquet"))
    assert [f.name for f in files] == ["0.parquet", "1.parquet", "2.parquet", "3.parquet"]
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.num_row_groups > 1 and meta.row_group(0).num_rows == 50
    ids = [pq.read_table(f).column("subject_id").unique().to_pylist() for f in files]
    assert [len(i) for i in ids] == [13, 13, 13, 1] and sorted(sum(ids, [])) == sum(ids, [])


def test_missing_rates_are_honoured(tmp_path):
    root = generate_cohort(
        tmp_path / "m",
        SandboxConfig(
            n_subjects=200, n_variants=50, image_size=32, missing={"text": 0.0, "image": 0.9, "genomics": 0.5}
        ),
    )
    n_images = pq.read_table(root / c.IMAGING_INDEX).num_rows
    assert 5 <= n_images <= 40  # about 20 of 200
    import pysam

    n_genomes = len(pysam.VariantFile(str(root / c.VARIANTS_VCF)).header.samples)
    assert 70 <= n_genomes <= 130


def test_missingness_can_depend_on_health(tmp_path):
    settings = dict(n_subjects=400, n_variants=50, image_size=8, missing={"image": 0.5})
    root = generate_cohort(tmp_path / "h", SandboxConfig(**settings, missing_health_effect=2.0))
    truth = pq.read_table(root / c.GROUND_TRUTH).to_pandas()
    health = (truth.metabolic + truth.symptoms + truth.structural) / np.sqrt(3)
    gap = health[truth.has_image].mean() - health[~truth.has_image].mean()
    assert gap > 0.8, gap  # the ill are imaged more often
    assert 0.35 < truth.has_image.mean() < 0.65


def test_survival_labels_follow_the_true_event_times(tiny_cohort):
    truth = pq.read_table(tiny_cohort / c.GROUND_TRUTH).to_pandas().set_index("subject_id")
    for disease in ("cvd", "t1d"):
        binary = pq.read_table(tiny_cohort / f"labels/{disease}_onset_1y.parquet").to_pandas()
        survival = pq.read_table(tiny_cohort / f"labels/{disease}_survival.parquet").to_pandas()
        true_days = truth.loc[survival.subject_id, f"event_days_{disease}"].to_numpy()
        # onset within a year is exactly the true event time falling within a year
        np.testing.assert_array_equal(binary.boolean_value.to_numpy(), true_days <= 365)
        seen = survival.boolean_value.to_numpy()
        days = survival.float_value.to_numpy()
        np.testing.assert_allclose(days[seen], true_days[seen], rtol=1e-5)  # events are on time
        assert np.all(days[~seen] < true_days[~seen])  # censored before the event
        assert np.all(days <= 5 * 365 + 2) and np.all(days > 0)  # cutoff 2025-12-31
        assert 0 < seen.mean() < 1


def test_two_diseases_share_and_differ_in_causes(tmp_path):
    root = generate_cohort(tmp_path / "d", SandboxConfig(n_subjects=1500, n_variants=60, image_size=8))
    oracle = json.loads((root / c.DATASET_METADATA).read_text())["medweave"]["oracle"]
    cvd, t1d = oracle["cvd_onset_1y"], oracle["t1d_onset_1y"]
    assert 0.15 < cvd["prevalence"] < 0.3 and 0.03 < t1d["prevalence"] < 0.1
    # notes and images carry CVD's symptoms and lesions and nothing about T1D
    assert cvd["auroc_by_modality"]["text"]["train"] > 0.58
    assert t1d["auroc_by_modality"]["text"]["train"] == 0.5
    assert t1d["auroc_by_modality"]["image"]["train"] == 0.5
    # the metabolic factor is shared: EHR informs both
    assert (
        min(cvd["auroc_by_modality"]["ehr_codes"]["train"], t1d["auroc_by_modality"]["ehr_codes"]["train"])
        > 0.6
    )
    for task in ("cvd_survival", "t1d_survival"):
        c_index = oracle[task]["c_index"]["train"]
        assert oracle[task]["c_index_given_available"]["train"] < c_index
        assert 0.7 < c_index < 1
        assert all(v["train"] < c_index for v in oracle[task]["c_index_by_modality"].values())


def test_oracle_c_index_matches_a_pairwise_count():
    """Harrell's C from scikit-survival equals counting concordant comparable pairs by hand."""
    from medweave.sandbox.oracle import _harrell_c

    rng = np.random.default_rng(1)
    time = rng.exponential(100, 300).round()  # rounded: ties in time occur
    event = rng.random(300) < 0.6
    score = -time + rng.normal(0, 60, 300)
    concordant = comparable = 0.0
    for i in np.flatnonzero(event):
        later = time > time[i]
        comparable += later.sum()
        concordant += (score[i] > score[later]).sum() + 0.5 * (score[i] == score[later]).sum()
    assert _harrell_c(event, time, score) == pytest.approx(concordant / comparable, abs=0.01)


def test_ct_volume_as_nifti_and_dicom_series_agree(tmp_path):
    from medweave.data.readers.volume import read_volume

    root = generate_cohort(
        tmp_path / "v",
        SandboxConfig(n_subjects=12, n_variants=50, image_size=16, volumes=True, missing={"image": 0.0}),
    )
    index = pq.read_table(root / c.IMAGING_INDEX).to_pandas()
    ct = index[index.modality == "CT"]
    assert len(ct) == 2 * (index.modality == "CR").sum()
    series = ct.path[~ct.path.str.endswith(".nii.gz")].iloc[0]
    from_dicom, spacing = read_volume(root / "imaging" / series)
    from_nifti, spacing_nii = read_volume(root / "imaging" / f"ct_nifti/{series[3:]}.nii.gz")
    assert from_dicom.shape == (32, 64, 64) and spacing == spacing_nii == (5.0, 2.5, 2.5)
    np.testing.assert_array_equal(from_dicom, from_nifti)
    assert from_dicom.min() >= -1024 and (from_dicom < -700).mean() > 0.2  # air and lungs in HU
    import nibabel as nib

    nifti = nib.load(root / "imaging" / f"ct_nifti/{series[3:]}.nii.gz")
    assert nib.aff2axcodes(nifti.affine) == ("L", "P", "S")  # the DICOM patient axes, said in RAS terms
    flipped = nib.Nifti1Image(
        np.asarray(nifti.dataobj)[::-1], np.diag([2.5, -2.5, 5.0, 1.0])
    )  # stored R to L
    nib.save(flipped, tmp_path / "flipped.nii.gz")
    np.testing.assert_array_equal(read_volume(tmp_path / "flipped.nii.gz")[0], from_nifti)  # reoriented
    names = sorted(p.name for p in (root / "imaging" / series).iterdir())
    import pydicom

    z = [float(pydicom.dcmread(root / "imaging" / series / n).ImagePositionPatient[2]) for n in names]
    assert z != sorted(z)  # file names are out of slice order, yet the volumes agree


def test_expression_follows_genotype_and_metabolic_state(tmp_path):
    from medweave.sandbox import genomics

    cfg = SandboxConfig(
        n_subjects=300, n_variants=80, image_size=8, expression_genes=30, missing={"genomics": 0.0}
    )
    root = generate_cohort(tmp_path / "x", cfg)
    expression = pq.read_table(root / "genomics/expression.parquet").to_pandas().set_index("subject_id")
    truth = pq.read_table(root / c.GROUND_TRUTH).to_pandas().set_index("subject_id")
    assert expression.shape == (300, 30)
    model = genomics.make_expression_model(genomics.make_panel(80, 0.8, 0), 30, 0)
    gene = int(np.argmax(np.abs(model.metabolic_loading)))
    r = np.corrcoef(expression.iloc[:, gene], truth.loc[expression.index, "metabolic"])[0, 1]
    assert abs(r) > 0.3 and np.sign(r) == np.sign(model.metabolic_loading[gene])


def test_refuses_to_overwrite_and_bad_rates(tmp_path):
    from medweave.errors import MedweaveError

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(MedweaveError, match="not empty"):
        generate_cohort(tmp_path / "full", SandboxConfig(n_subjects=10))
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(MedweaveError, match="missing.image=1.5"):
        generate_cohort(tmp_path / "bad", SandboxConfig(missing={"image": 1.5}))
    with pytest.raises(MedweaveError, match="diseases.cvd: unknown causes"):
        generate_cohort(tmp_path / "bad", SandboxConfig(diseases={"cvd": Disease("I21", 0.0, {"bmi": 1.0})}))
    assert not list(tmp_path.glob(".bad*")) and not (tmp_path / "bad").exists()


def test_modalities_carry_signal(tmp_path):
    """Each latent factor shows up in its modality: lab values follow m, lesions follow l."""
    root = generate_cohort(tmp_path / "s", SandboxConfig(n_subjects=150, n_variants=50, image_size=64))
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
    root = generate_cohort(tmp_path / "o", SandboxConfig(n_subjects=1500, n_variants=50, image_size=16))
    oracle = json.loads((root / c.DATASET_METADATA).read_text())["medweave"]["oracle"]["cvd_onset_1y"]
    full = oracle["auroc"]["train"]
    alone = {m: v["train"] for m, v in oracle["auroc_by_modality"].items()}
    assert set(alone) == {"ehr_codes", "text", "image", "genomics"}
    assert all(0.55 < v < full - 0.1 for v in alone.values()), (full, alone)
    # fusing what each subject has beats any one modality, yet misses what the missing would show
    available = oracle["auroc_given_available"]["train"]
    assert max(alone.values()) + 0.03 < available < full - 0.03, (alone, available, full)
