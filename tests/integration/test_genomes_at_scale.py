"""End to end: a sandbox whose genomes come as PLINK 2 per chromosome, with PGS Catalog scoring
files of the true scores, trains (debug=smoke) on principal components and polygenic scores."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from medweave.data.store import open_arrays

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fmt", ["plink2", "plink1"])
def test_plink_genomes_train_on_pcs_and_pgs(tmp_path, fmt):
    from medweave.cli.train import train
    from medweave.sandbox.generate import SandboxConfig, generate_cohort
    from tests.conftest import compose_run

    missing = {"text": 0.25, "image": 0.5, "genomics": 0.3}
    root = generate_cohort(
        tmp_path / "cohort",
        SandboxConfig(
            n_subjects=150,
            n_variants=600,
            image_size=64,
            seed=4,
            genomics_format=fmt,
            genome_chromosomes=3,
            missing=missing,
        ),
    )
    suffix = ".pgen" if fmt == "plink2" else ".bed"
    assert sorted(p.name for p in (root / "genomics/variants").glob(f"*{suffix}")) == [
        f"chr{k}{suffix}" for k in (1, 2, 3)
    ]
    overrides = [
        "debug=smoke",
        f"data.root={root}",
        "logger=csv",
        "data.modalities=[ehr_codes,genomics]",
        "data.genomics.sources=[pcs,pgs]",
        "data.genomics.pcs=4",
        "data.genomics.pgs_ambiguous=keep",  # the sandbox's strands agree: keep A/T and C/G sites
    ]
    cfg = compose_run("train", overrides, tmp_path / "logs", tmp_path / "run")
    value = train(cfg)
    assert 0.0 <= value <= 1.0

    cache = next(p for p in (tmp_path / "logs").rglob("vocab.json")).parent
    vocab = json.loads((cache / "vocab.json").read_text())
    assert vocab["genomics_sources"] == ["pcs", "pgs"]
    assert vocab["pca"]["k"] == 4 and [e["name"] for e in vocab["pgs"]] == [
        "PGS_SANDBOX_CVD",
        "PGS_SANDBOX_T1D",
    ]
    assert all(e["counts"]["swapped"] > 0 and e["counts"]["flipped"] > 0 for e in vocab["pgs"])
    subjects = np.load(cache / "subjects.npz")
    has = subjects["present_genomics"]
    scores = np.asarray(open_arrays(cache)["genomics_pgs"])
    truth = pq.read_table(root / "ground_truth/risk.parquet").to_pandas().set_index("subject_id")
    genetic = truth.loc[subjects["subject_id"][has], "genetic_cvd"].to_numpy()
    # The matched score is the sandbox's own genetic risk.
    assert np.corrcoef(scores[has, 0], genetic)[0, 1] > 0.95
    assert (scores[~has] == 0).all()

    if fmt == "plink2":  # evaluation re-prepares from the checkpoint's vocabulary: projection, not a refit
        from medweave.cli.eval import evaluate

        ckpt = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
        eval_cfg = compose_run(
            "eval",
            [f"ckpt_path={ckpt}", f"data.root={root}", "logger=csv"],
            tmp_path / "logs",
            tmp_path / "eval",
        )
        results = evaluate(eval_cfg)
        assert 0.0 <= results["test/auroc"] <= 1.0
        caches = [p.parent for p in (tmp_path / "logs").rglob("vocab.json")]
        again = next(p for p in caches if p != cache)
        np.testing.assert_allclose(np.asarray(open_arrays(again)["genomics_pgs"]), scores, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(open_arrays(again)["genomics_pcs"]),
            np.asarray(open_arrays(cache)["genomics_pcs"]),
            atol=1e-4,
        )


def test_registry_cohort_with_genomes_for_a_subset_trains_the_fused_model(tmp_path):
    """A registry-scale sandbox whose genomes cover a subset trains ehr_codes + genomics (pcs, pgs):
    the fused model gets the embeddings of the sequenced and nothing for the others."""
    from medweave.cli.train import train
    from medweave.sandbox.generate import SandboxConfig, generate_cohort
    from tests.conftest import compose_run

    settings = dict(n_subjects=200, registry_history=True, events_per_person=30, genome_subjects=80)
    root = generate_cohort(
        tmp_path / "cohort",
        SandboxConfig(**settings, n_variants=1500, genomics_format="plink2", genome_chromosomes=2, seed=2),
    )
    overrides = [
        "debug=smoke",
        f"data.root={root}",
        "logger=csv",
        "data.modalities=[ehr_codes,genomics]",
        "data.genomics.sources=[pcs,pgs]",
        "data.genomics.pcs=4",
        "data.genomics.pgs_ambiguous=keep",
    ]
    cfg = compose_run("train", overrides, tmp_path / "logs", tmp_path / "run")
    assert 0.0 <= train(cfg) <= 1.0
    cache = next(p for p in (tmp_path / "logs").rglob("vocab.json")).parent
    subjects = np.load(cache / "subjects.npz")
    has = subjects["present_genomics"]
    assert has.sum() == 80
    arrays = open_arrays(cache)
    scores = np.asarray(arrays["genomics_pgs"])
    truth = pq.read_table(root / "ground_truth/risk.parquet").to_pandas().set_index("subject_id")
    genetic = truth.loc[subjects["subject_id"][has], "genetic_t1d"].to_numpy()
    assert np.corrcoef(scores[has, 1], genetic)[0, 1] > 0.99
    assert (np.asarray(arrays["genomics_pcs"])[~has] == 0).all()
