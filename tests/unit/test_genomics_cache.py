"""The genomics modality's cache: sample map, per-chromosome files, variant QC on train,
expression in either orientation, external embeddings with provenance, and the batch vector."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data.prepare import PrepareConfig, prepare
from medweave.data.store import open_arrays
from medweave.errors import MedweaveError

TASK = "cvd_onset_1y"


def splits(root):
    t = pq.read_table(root / c.SUBJECT_SPLITS).to_pandas()
    return t.subject_id.to_numpy(), t.split.to_numpy()


def write_vcf(path, samples, genotypes, chrom="chr1", start=100):
    """genotypes: [variants, samples] of GT strings."""
    import pysam

    lines = [
        "##fileformat=VCFv4.2",
        f"##contig=<ID={chrom},length=1000000>",
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]),
    ]
    for v, row in enumerate(genotypes):
        lines.append("\t".join([chrom, str(start + v), ".", "A", "G", ".", "PASS", ".", "GT", *row]))
    plain = path.with_suffix("")
    plain.write_text("\n".join(lines) + "\n")
    pysam.tabix_compress(str(plain), str(path), force=True)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    plain.unlink()


@pytest.fixture
def cohort(tiny_cohort, tmp_path):
    root = shutil.copytree(tiny_cohort, tmp_path / "cohort")
    shutil.rmtree(root / "genomics")
    (root / "genomics").mkdir()
    return root


def run(root, tmp_path, vocab=None, **genomics):
    cfg = PrepareConfig(task=TASK, modalities=("genomics",), genomics=genomics)
    folder = prepare(root, tmp_path / "cache", cfg, vocab)
    return folder, json.loads((folder / "vocab.json").read_text()), np.load(folder / "subjects.npz")


def test_sample_map_per_chromosome_files_and_qc_on_train(cohort, tmp_path):
    ids, split = splits(cohort)
    rng = np.random.default_rng(0)
    chosen = rng.permutation(len(ids))[:60]
    samples = [f"NA{k:05d}" for k in range(len(chosen))]
    pq.write_table(
        pa.table({"sample": samples, "subject_id": ids[chosen]}), cohort / "genomics/sample_map.parquet"
    )
    gts = rng.choice(["0/0", "0|1", "1/1"], size=(4, 60))
    gts[1] = "0/0"  # monomorphic: MAF 0, dropped by min_maf
    gts[2, :] = "./."  # call rate 0 on train
    gts[2, :3] = "1/1"
    gts[3, split[chosen] != "train"] = "1/1"  # rare on train only: QC must not look at eval subjects
    gts[3, split[chosen] == "train"] = "0/0"
    (cohort / "genomics/variants").mkdir()
    write_vcf(cohort / "genomics/variants/chr1.vcf.gz", samples[:40], gts[:, :40])
    write_vcf(cohort / "genomics/variants/chr1b.vcf.gz", samples[40:], gts[:, 40:], chrom="chr1")
    write_vcf(cohort / "genomics/variants/chr2.vcf.gz", samples, gts[:1], chrom="chr2", start=5)

    folder, vocab, s = run(cohort, tmp_path, min_maf=0.01, min_call_rate=0.5)
    assert vocab["variants"] == ["chr1:100:A:G", "chr2:5:A:G"]
    # 5 read: chr1's 4 sites (its samples split over two files, merged by sample) and chr2's one.
    assert vocab["variant_qc"] == {"min_call_rate": 0.5, "min_maf": 0.01, "read": 5, "kept": 2}
    sid = s["subject_id"]
    row = {int(v): i for i, v in enumerate(sid)}
    dos = np.asarray(open_arrays(folder)["genomics"])
    expect = {"0/0": 0, "0|1": 50, "1/1": 100}
    for k in (0, 45):
        r = row[int(ids[chosen[k]])]
        assert dos[r].tolist() == [expect[gts[0, k]], expect[gts[0, k]]]
    assert s["present_genomics"].sum() == len(set(ids[chosen]) & set(sid.tolist()))

    # Evaluation keeps the training variants, whatever QC would say on this cohort.
    _, again, _ = run(cohort, tmp_path / "eval", vocab=vocab, min_maf=0.4)
    assert again["variants"] == vocab["variants"]


def test_no_variant_passing_qc_says_which_thresholds(cohort, tmp_path):
    ids, _ = splits(cohort)
    write_vcf(cohort / c.VARIANTS_VCF, [str(i) for i in ids[:50]], [["0/0"] * 50, ["0/1"] * 5 + ["0/0"] * 45])
    with pytest.raises(MedweaveError, match=r"variants.vcf.gz: no variant passes QC .*min_maf=0.3"):
        run(cohort, tmp_path, min_maf=0.3)


def expression_tables(ids, rng):
    counts = rng.poisson(20, size=(len(ids), 5)).astype(np.float64)
    genes = [f"G{j}" for j in range(5)]
    by_subject = pa.table({"subject_id": ids, **{g: counts[:, j] for j, g in enumerate(genes)}})
    by_gene = pa.table({"gene": genes, **{str(i): counts[k] for k, i in enumerate(ids)}})
    return counts, by_subject, by_gene


def test_expression_either_orientation_cpm_log1p_zscore_on_train(cohort, tmp_path):
    ids, split = splits(cohort)
    counts, by_subject, by_gene = expression_tables(ids, np.random.default_rng(1))
    options = dict(sources=["expression"], expression_transform=["cpm", "log1p", "zscore"])
    pq.write_table(by_subject, cohort / c.EXPRESSION)
    folder_a, vocab_a, s = run(cohort, tmp_path / "a", **options)
    pq.write_table(by_gene, cohort / c.EXPRESSION)
    folder_b, vocab_b, _ = run(cohort, tmp_path / "b", **options)
    a, b = (
        np.asarray(open_arrays(folder_a)["genomics_expression"]),
        np.asarray(open_arrays(folder_b)["genomics_expression"]),
    )
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert vocab_a["genes"] == [f"G{j}" for j in range(5)] and vocab_a["gene_mean"] == vocab_b["gene_mean"]
    # z-scores on train statistics: train rows have mean 0, what comes out matches numpy's.
    logcpm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e6)
    train = split == "train"
    expected = (logcpm - logcpm[train].mean(0)) / logcpm[train].std(0)
    order = np.searchsorted(s["subject_id"], ids)
    np.testing.assert_allclose(a[order], expected, rtol=1e-4, atol=1e-4)


def embeddings_table(ids, dim, provenance):
    rng = np.random.default_rng(2)
    values = pa.array(list(rng.normal(size=(len(ids), dim)).astype(np.float32)), pa.list_(pa.float32()))
    table = pa.table({"subject_id": pa.array(ids, pa.int64()), "embedding": values})
    return table.replace_schema_metadata(provenance)


def test_sources_are_concatenated_and_provenance_travels(cohort, tmp_path):
    from medweave.data.datamodule import PreparedCohort

    ids, _ = splits(cohort)
    write_vcf(cohort / c.VARIANTS_VCF, [str(i) for i in ids[:50]], [["0/0", "0/1"] * 25, ["1/1", "0/1"] * 25])
    pq.write_table(expression_tables(ids[20:90], np.random.default_rng(3))[1], cohort / c.EXPRESSION)
    provenance = {"model": "gnome-embed", "version": "1.2", "source": "https://example.org/gnome"}
    pq.write_table(embeddings_table(ids[60:], 6, provenance), cohort / c.EMBEDDINGS)

    folder, vocab, s = run(cohort, tmp_path)
    assert vocab["genomics_sources"] == ["variants", "expression", "embeddings"]
    assert vocab["embedding_provenance"] == provenance
    present = s["present_genomics"]
    assert present.sum() == len(set(ids.tolist()) & set(s["subject_id"].tolist()))  # the union of sources
    prepared = PreparedCohort(folder, ["genomics"])
    assert prepared.encoder_inputs() == {"genomics": {"n_features": 2 + 5 + 6}}
    batch = prepared.batch(np.arange(len(s["subject_id"])))
    assert batch["genomics"].shape == (len(s["subject_id"]), 13)
    assert np.isfinite(batch["genomics"].numpy()).all()

    # Another model's embeddings cannot feed a model trained on these.
    pq.write_table(embeddings_table(ids[60:], 6, {**provenance, "version": "2.0"}), cohort / c.EMBEDDINGS)
    with pytest.raises(
        MedweaveError, match=r"embeddings.parquet: embeddings from .*'2.0'.*expected the same"
    ):
        run(cohort, tmp_path / "eval", vocab=vocab)


def test_provenance_from_a_json_sidecar_and_a_missing_field(cohort, tmp_path):
    ids, _ = splits(cohort)
    pq.write_table(embeddings_table(ids, 4, None), cohort / c.EMBEDDINGS)
    sidecar = cohort / "genomics/embeddings.json"
    sidecar.write_text(json.dumps({"model": "m", "version": "1"}))
    with pytest.raises(MedweaveError, match=r"embeddings.json: provenance field\(s\) \['source'\] missing"):
        run(cohort, tmp_path, sources=["embeddings"])
    sidecar.write_text(json.dumps({"model": "m", "version": "1", "source": "s"}))
    _, vocab, _ = run(cohort, tmp_path / "b", sources=["embeddings"])
    assert vocab["embedding_provenance"] == {"model": "m", "version": "1", "source": "s"}


def test_unknown_options_suggest_the_near_one(cohort, tmp_path):
    with pytest.raises(MedweaveError, match="data.genomics.min_mafs: unknown option.*'min_maf'"):
        run(cohort, tmp_path, min_mafs=0.1)
    with pytest.raises(MedweaveError, match="sources: 'rna' is not one of"):
        run(cohort, tmp_path, sources=["rna"])


def test_validate_reports_every_genomics_fault_at_once(cohort):
    from medweave.data.validate import validate_cohort

    ids, _ = splits(cohort)
    write_vcf(cohort / c.VARIANTS_VCF, ["A", "B", "C"], [["0/0", "0/1", "1/1"]])
    (cohort / "genomics/sample_map.tsv").write_text(
        f"sample\tsubject_id\nA\t{ids[0]}\nB\t{ids[1]}\nC\t{ids[2]}\nZ\t{ids[3]}\nB\t{ids[4]}\n"
    )
    counts, table, _ = expression_tables(ids, np.random.default_rng(0))
    pq.write_table(table.append_column("note", pa.array(["x"] * len(ids))), cohort / c.EXPRESSION)
    pq.write_table(embeddings_table(ids, 3, None), cohort / c.EMBEDDINGS)
    found = [str(p) for p in validate_cohort(cohort).problems]
    expected = [
        "genomics/sample_map.tsv: row 1, field sample: sample listed twice",
        "genomics/sample_map.tsv: row 3, field sample: names a sample that no VCF/BCF",
        "genomics/expression.parquet: column note: has type string; expected numeric",
        "genomics/embeddings.parquet: file: schema metadata: provenance field(s) "
        "['model', 'version', 'source']",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in found), (text, found)
    assert len(found) == len(expected), found
    assert not any(str(i) in " ".join(found) for i in ids[:5])  # rows, never subject IDs
