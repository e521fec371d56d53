"""Real VCF/BCF files from cyvcf2's test data, through the reader and a whole run.

The sandbox cohort's genomics/ is replaced by per-chromosome files a real pipeline wrote
(test.vcf.gz: 189 samples with missing and half-missing calls; test.snpeff.bcf: a BCF of 4 other
samples), and a sample map puts the real sample names onto the cohort's subject_ids. The cohort
then goes through medweave-validate, training (debug=smoke, ehr_codes + genomics) and evaluation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data.readers.vcf import read_dosages, read_samples
from tests.public_files import package_files

pytestmark = pytest.mark.slow


def real_files():
    files = {p.name: p for p in package_files("cyvcf2==0.30.1", "cyvcf2/tests/test.*")}
    return files["test.vcf.gz"], files["test.snpeff.bcf"]


@pytest.fixture
def real_cohort(tiny_cohort, tmp_path):
    vcf, bcf = real_files()
    root = shutil.copytree(tiny_cohort, tmp_path / "cohort")
    shutil.rmtree(root / "genomics")
    folder = root / c.VARIANTS_DIR
    folder.mkdir(parents=True)
    for src, name in ((vcf, "chr1.vcf.gz"), (bcf, "chr1_snpeff.bcf")):
        shutil.copy(src, folder / name)
        index = next(
            p for p in (src.with_name(src.name + ".tbi"), src.with_name(src.name + ".csi")) if p.exists()
        )
        shutil.copy(index, folder / (name + index.suffix))
    ids = pq.read_table(root / c.SUBJECT_SPLITS).column("subject_id").to_pylist()
    samples = read_samples(vcf)[:100] + read_samples(bcf)  # the VCF's other 89 samples: not this cohort
    rows = [f"{s}\t{i}\n" for s, i in zip(samples, ids, strict=False)]
    (root / "genomics/sample_map.tsv").write_text("sample\tsubject_id\n" + "".join(rows))
    return root, len(rows)


def test_real_vcf_through_the_reader():
    vcf, bcf = real_files()
    got = read_dosages(vcf)
    assert got.dosages.shape == (189, 115)
    missing = got.dosages == -1
    assert 0.01 < missing.mean() < 0.5  # the file's ./. and half-missing calls
    assert set(np.unique(got.dosages[~missing]).tolist()) <= {0, 50, 100}  # 0, 1, 2 ALT alleles
    assert read_dosages(bcf).dosages.shape == (4, 10)


def test_real_genomes_validate_train_and_evaluate(real_cohort, tmp_path):
    from medweave.cli.eval import evaluate
    from medweave.cli.train import train
    from tests.conftest import compose_run

    root, n_mapped = real_cohort
    check = subprocess.run(
        [sys.executable, "-m", "medweave.cli.validate", f"data.root={root}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert check.returncode == 0 and check.stdout.startswith("OK:"), check.stdout + check.stderr

    overrides = ["debug=smoke", f"data.root={root}", "logger=csv", "data.modalities=[ehr_codes,genomics]"]
    cfg = compose_run("train", overrides, tmp_path / "logs", tmp_path / "run")
    value = train(cfg)
    assert 0.0 <= value <= 1.0

    cache = next(p for p in (tmp_path / "logs").rglob("vocab.json"))  # the prepared cache of this run
    import json

    vocab = json.loads(cache.read_text())
    assert vocab["genomics_sources"] == ["variants"]
    assert vocab["variant_qc"]["read"] == 115 + 10  # both files' sites
    # No default QC threshold: every site is kept but those with no call at all in train genomes.
    assert 115 < len(vocab["variants"]) <= 125
    present = np.load(cache.parent / "subjects.npz")["present_genomics"]
    assert 0 < present.sum() <= n_mapped

    ckpt = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    eval_cfg = compose_run(
        "eval", [f"ckpt_path={ckpt}", f"data.root={root}", "logger=csv"], tmp_path / "logs", tmp_path / "eval"
    )
    results = evaluate(eval_cfg)
    assert 0.0 <= results["test/auroc"] <= 1.0
