"""Genomes at scale: the out-of-core randomized PCA against numpy's SVD, train-only fitting, and
PGS Catalog score matching (swaps, strand flips, ambiguous sites, genome build)."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.data.genomics import pca, pgs
from medweave.data.genomics.files import genotype_files
from medweave.data.genomics.genotypes import Genotypes
from medweave.data.genomics.options import GenomicsOptions
from medweave.data.readers import plink
from medweave.data.readers.genotypes import VariantTable
from medweave.data.store import open_arrays
from medweave.errors import MedweaveError


def structured(n, v, seed=0):
    """Four populations with their own allele frequencies: three clear components, then noise."""
    rng = np.random.default_rng(seed)
    pop = rng.integers(0, 4, n)
    af = np.clip(rng.uniform(0.1, 0.5, v)[:, None] + rng.normal(0, 0.15, (v, 4)), 0.02, 0.98)
    return rng.binomial(2, af[:, pop]).astype(np.int8)  # [v, n]


def variants(v, chrom="1", ref=None, alt=None):
    return VariantTable(
        chrom=np.full(v, chrom),
        pos=np.arange(v) * 100 + 1000,
        id=np.array([f"rs{i}" for i in range(v)]),
        ref=np.array(ref if ref is not None else ["A"] * v),
        alt=np.array(alt if alt is not None else ["G"] * v),
    )


def open_set(tmp_path, g, v=None, name="x"):
    samples = [f"s{i}" for i in range(g.shape[1])]
    plink.write_pgen(tmp_path / f"{name}.pgen", samples, v or variants(len(g)), [g])
    r = plink.PgenReader(tmp_path / f"{name}.pgen")
    return Genotypes([r], [np.arange(len(samples))], np.arange(len(samples)))


def opts(**kw):
    return GenomicsOptions.from_dict({"pca_min_maf": 0.0, "pcs": 3, **kw})


def test_randomized_pca_matches_numpy_svd_and_projects_the_same(tmp_path):
    g = structured(120, 400)
    genos = open_set(tmp_path, g)
    train = np.ones(120, bool)
    vocab = {}
    got = pca.fit_project(genos, train, opts(), vocab)
    x = g.T.astype(np.float64)
    x = (x - x.mean(0)) / x.std(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    want = u[:, :3] * s[:3]
    want /= want.std(0)
    for j in range(3):
        assert abs(np.corrcoef(got[:, j], want[:, j])[0, 1]) > 0.999, j
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=0.1)  # two power iterations
    sharper = pca.fit_project(genos, train, opts(pca_power_iterations=8), {})
    np.testing.assert_allclose(np.abs(sharper), np.abs(want), atol=2e-3)  # power iterations converge
    again = pca.project(genos, vocab["pca"])  # evaluation's path, from the packed model
    np.testing.assert_allclose(again, got, atol=1e-4)


def test_pca_fits_on_train_only(tmp_path):
    g = structured(100, 300, seed=1)
    train = np.arange(100) < 60
    vocab_a, vocab_b = {}, {}
    pca.fit_project(open_set(tmp_path, g, name="a"), train, opts(), vocab_a)
    g2 = g.copy()
    g2[:, ~train] = np.random.default_rng(5).integers(0, 3, (300, 40))  # other subjects' genomes change
    out = pca.fit_project(open_set(tmp_path, g2, name="b"), train, opts(), vocab_b)
    assert vocab_a["pca"]["loadings"] == vocab_b["pca"]["loadings"]
    assert vocab_a["pca"]["mean"] == vocab_b["pca"]["mean"]
    assert out.shape == (100, 3) and np.isfinite(out).all()


def test_pca_and_pgs_in_file_order_with_strangers_absent_subjects_and_missing_calls(tmp_path):
    """The passes work on the file's own samples (never reordered, never standardised): the same
    PCs and scores as the dense subject-order matrix, with missing calls and absent genomes at the
    train mean, and samples that are no labelled subject ignored."""
    rng = np.random.default_rng(7)
    n_subjects, v = 100, 300
    g = structured(110, v, seed=2)
    g[rng.random(g.shape) < 0.02] = -9
    rows = np.full(110, -1)
    rows[rng.permutation(110)[:90]] = rng.permutation(n_subjects)[:90]  # 10 strangers, 10 absent
    samples = [f"s{i}" for i in range(110)]
    plink.write_pgen(tmp_path / "x.pgen", samples, variants(v), [g])
    genos = Genotypes([plink.PgenReader(tmp_path / "x.pgen")], [rows], np.arange(n_subjects))
    train = rng.random(n_subjects) < 0.7
    dense = np.full((n_subjects, v), np.nan)
    dense[rows[rows >= 0]] = np.where(g < 0, np.nan, g).T[rows >= 0]
    mean, sd = np.nanmean(dense[train], 0), np.nanstd(dense[train], 0)
    z = np.nan_to_num((dense - mean) / sd)
    _u, _s, vt = np.linalg.svd(z[train], full_matrices=False)
    want = z @ vt[:3].T
    want /= want[train].std(0)
    vocab: dict = {}
    got = pca.fit_project(genos, train, opts(pca_power_iterations=8), vocab)
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=2e-3)
    np.testing.assert_allclose(pca.project(genos, vocab["pca"]), got, atol=1e-4)
    weight = rng.normal(0, 1, v)
    entry = {"weight": pca.pack(weight), "offset": 0.5, "variants": variants(v).keys()}
    raw = pgs.score(genos, entry, train)
    np.testing.assert_allclose(raw, np.where(np.isnan(dense), mean, dense) @ weight + 0.5, rtol=1e-4)
    np.testing.assert_allclose(pgs.score(genos, entry, None), raw, rtol=1e-6)  # the means travel
    genos.close()


def score_file(path, rows, build="GRCh38"):
    head = [
        "###PGS CATALOG SCORING FILE - see https://www.pgscatalog.org/downloads/ for more information",
        "#format_version=2.0",
        "##POLYGENIC SCORE (PGS) INFORMATION",
        "#pgs_id=PGS999999",
        "#pgs_name=test",
        "#trait_reported=test trait",
        f"#genome_build={build}",
        "rsID\tchr_name\tchr_position\teffect_allele\tother_allele\teffect_weight",
    ]
    path.write_text("\n".join(head + ["\t".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_pgs_matching_swaps_flips_and_ambiguous_sites(tmp_path):
    ref = ["A", "A", "A", "C", "A", "G"]
    alt = ["G", "G", "G", "T", "T", "A"]
    rng = np.random.default_rng(3)
    g = rng.integers(0, 3, (6, 50)).astype(np.int8)
    g[0, 0] = -9  # a missing call counts the train mean
    genos = open_set(tmp_path, g, variants(6, ref=ref, alt=alt))
    pos = [1000 + 100 * i for i in range(6)]
    rows = [
        ("rs0", 1, pos[0], "G", "A", 0.5),  # as written: ALT is the effect allele
        ("rs1", 1, pos[1], "A", "G", 0.3),  # swapped: REF is the effect allele
        ("rs2", 1, pos[2], "C", "T", 0.2),  # strand flip of G/A
        ("rs3", 1, pos[3], "G", "A", 0.7),  # flip and swap of C/T: effect C = REF
        ("rs4", 1, pos[4], "T", "A", 0.9),  # A/T: ambiguous
        ("rs9", 1, 99, "A", "G", 1.0),  # not in the genotypes
    ]
    path = score_file(tmp_path / "s.txt", rows)
    train = np.ones(50, bool)
    entry = pgs.match(genos, path, opts(pgs_min_overlap=0.5), "GRCh38")
    c = entry["counts"]
    assert (c["matched"], c["swapped"], c["flipped"], c["ambiguous_dropped"]) == (4, 2, 2, 1)
    raw = pgs.score(genos, entry, train)
    d = g.astype(float)
    d[0, 0] = d[0, 1:].mean()
    want = 0.5 * d[0] + 0.3 * (2 - d[1]) + 0.2 * d[2] + 0.7 * (2 - d[3])
    np.testing.assert_allclose(raw, want, rtol=1e-5)
    kept = pgs.match(genos, path, opts(pgs_min_overlap=0.5, pgs_ambiguous="keep"), "GRCh38")
    assert kept["counts"]["matched"] == 5 and kept["counts"]["ambiguous_dropped"] == 0


def test_pgs_build_mismatch_and_low_overlap_are_clear_errors(tmp_path):
    genos = open_set(tmp_path, np.zeros((3, 4), np.int8))
    path = score_file(tmp_path / "s.txt", [("rs0", 1, 1000, "G", "A", 0.5)], build="GRCh37")
    with pytest.raises(
        MedweaveError, match=r"s.txt: scoring file is on GRCh37 but the genotypes are on GRCh38"
    ):
        pgs.match(genos, path, opts(), "GRCh38")
    path = score_file(tmp_path / "t.txt", [("rs0", 1, 1000, "G", "A", 0.5), ("rs1", 2, 5, "G", "A", 1)])
    with pytest.raises(MedweaveError, match=r"1 of 2 score variants match.*pgs_min_overlap=75%"):
        pgs.match(genos, path, opts(), "GRCh38")


def test_a_chromosome_missing_from_a_per_chromosome_set(tmp_path):
    folder = tmp_path / "genomics" / "variants"
    folder.mkdir(parents=True)
    for k in (1, 2, 4):
        (folder / f"chr{k}.pgen").write_bytes(b"")
    with pytest.raises(MedweaveError, match=r"chromosome 3 missing from the per-chromosome set"):
        genotype_files(tmp_path, GenomicsOptions())
    with pytest.raises(MedweaveError, match=r"chromosome 5 missing.*data.genomics.chromosomes"):
        genotype_files(tmp_path, GenomicsOptions.from_dict({"chromosomes": [1, 2, 4, 5]}))
    (folder / "chr3.pgen").write_bytes(b"")
    assert [p.name for p in genotype_files(tmp_path, GenomicsOptions())] == [
        f"chr{k}.pgen" for k in (1, 2, 3, 4)
    ]


@pytest.fixture
def plink_cohort(tiny_cohort, tmp_path):
    """The tiny cohort with its genomes as PLINK 2 per chromosome, samples named NA0000.. (a map)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from medweave.data import contract as c

    root = shutil.copytree(tiny_cohort, tmp_path / "cohort")
    shutil.rmtree(root / "genomics")
    ids = pq.read_table(root / c.SUBJECT_SPLITS).column("subject_id").to_numpy()[:80]
    samples = [f"NA{k:04d}" for k in range(len(ids))]
    g = structured(len(ids), 120, seed=2)
    (root / "genomics/variants").mkdir(parents=True)
    (root / "genomics/pgs").mkdir()
    for k, rows in ((1, slice(0, 60)), (2, slice(60, 120))):
        v = variants(60, chrom=str(k))
        plink.write_pgen(root / f"genomics/variants/chr{k}.pgen", samples, v, [g[rows]])
    pq.write_table(pa.table({"sample": samples, "subject_id": ids}), root / "genomics/sample_map.parquet")
    score_file(root / "genomics/pgs/s.txt", [(f"rs{i}", 1, 1000 + 100 * i, "G", "A", 0.1) for i in range(60)])
    return root


def prepare_plink(root, tmp_path, **genomics):
    import json

    from medweave.data.prepare import PrepareConfig, prepare

    genomics = {
        "sources": ["pcs", "pgs"],
        "pcs": 3,
        "pgs_ambiguous": "keep",
        "genome_build": "GRCh38",
        **genomics,
    }
    cfg = PrepareConfig(task="cvd_onset_1y", modalities=("genomics",), genomics=genomics)
    folder = prepare(root, tmp_path / "cache", cfg)
    return folder, json.loads((folder / "vocab.json").read_text())


def test_plink_cohort_prepares_pcs_and_pgs_through_the_sample_map(plink_cohort, tmp_path):
    from medweave.data.validate import validate_cohort

    report = validate_cohort(plink_cohort)
    assert report.ok, [str(p) for p in report.problems]
    assert report.counts["genomes"] == 80 and report.counts["genotyped_variants"] == 120
    folder, vocab = prepare_plink(plink_cohort, tmp_path)
    present = np.load(folder / "subjects.npz")["present_genomics"]
    pcs, scores = (
        np.asarray(open_arrays(folder)["genomics_pcs"]),
        np.asarray(open_arrays(folder)["genomics_pgs"]),
    )
    assert pcs.shape[1] == 3 and scores.shape[1] == 1 and 0 < present.sum() <= 80
    assert (pcs[~present] == 0).all() and pcs[present].std() > 0.5
    assert vocab["pgs"][0]["counts"]["matched"] == 60


def test_a_plink_sample_file_that_disagrees_with_the_sample_map(plink_cohort, tmp_path):
    for k in (1, 2):  # the genome centre renamed its samples: the map names none of them
        psam = plink_cohort / f"genomics/variants/chr{k}.psam"
        psam.write_text(psam.read_text().replace("NA", "XX"))
    with pytest.raises(
        MedweaveError, match=r"sample_map.parquet: row 0, field sample: names a sample that no"
    ):
        prepare_plink(plink_cohort, tmp_path)


def test_per_chromosome_files_must_hold_the_same_samples(plink_cohort, tmp_path):
    psam = plink_cohort / "genomics/variants/chr2.psam"
    psam.write_text(psam.read_text().replace("NA0005", "NB0005"))
    with pytest.raises(
        MedweaveError, match=r"chr2.pgen: sample 5 \(in file order\) is not in chr1.pgen's sample"
    ):
        prepare_plink(plink_cohort, tmp_path)


def test_a_chromosome_missing_is_a_validation_problem(plink_cohort):
    from medweave.data.validate import validate_cohort

    for ext in ("pgen", "pvar", "psam"):
        (plink_cohort / f"genomics/variants/chr1.{ext}").rename(
            plink_cohort / f"genomics/variants/chr3.{ext}"
        )
    found = [str(p) for p in validate_cohort(plink_cohort).problems]
    assert any("chromosome 1 missing from the per-chromosome set" in p for p in found), found


def test_a_selected_variant_set_takes_the_dense_dosage_path(plink_cohort, tmp_path):
    with pytest.raises(
        MedweaveError, match=r"chr1.pgen: the variants source .* needs data.genomics.variant_set"
    ):
        prepare_plink(plink_cohort, tmp_path, sources=["variants"])
    # Two keys (chrom:pos:ref:alt) and one of the files' IDs; one listed variant no file has.
    (plink_cohort / "genomics/selected.txt").write_text(
        "# my variants\n1:1000:A:G\n2:1100:A:G\nrs7\n9:1:A:C\n"
    )
    folder, vocab = prepare_plink(
        plink_cohort, tmp_path, sources=["variants"], variant_set="genomics/selected.txt"
    )
    assert vocab["variants"] == ["1:1000:A:G", "1:1700:A:G", "2:1100:A:G", "2:1700:A:G"]  # rs7 on both
    dense = np.asarray(open_arrays(folder)["genomics"])
    subjects = np.load(folder / "subjects.npz")
    row = int(np.flatnonzero(subjects["present_genomics"])[0])
    assert dense.shape == (len(subjects["subject_id"]), 4) and set(np.unique(dense[row])) <= {0, 50, 100}


def test_a_bgen_cohort_prepares_pcs(plink_cohort, tmp_path):
    """The same genomes as one BGEN file (samples inside it) instead of PLINK per chromosome."""
    import shutil

    from tests.unit.test_genotype_readers import write_bgen

    _, want = prepare_plink(plink_cohort, tmp_path / "plink", sources=["pcs"])
    folder = plink_cohort / "genomics/variants"
    readers = [plink.PgenReader(folder / f"chr{k}.pgen") for k in (1, 2)]
    samples = readers[0].samples
    dose = np.concatenate([next(r.blocks(1000))[1] for r in readers])
    table = VariantTable(
        *(
            np.concatenate([getattr(r.variants, f) for r in readers])
            for f in ("chrom", "pos", "id", "ref", "alt")
        )
    )
    probs = np.stack([(dose == 0), (dose == 1), (dose == 2)], axis=-1).astype(float)
    shutil.rmtree(folder)
    write_bgen(plink_cohort / "genomics/variants.bgen", samples, table, probs)
    _, vocab = prepare_plink(plink_cohort, tmp_path / "bgen", sources=["pcs"])
    assert vocab["pca"]["k"] == 3 and vocab["pca"]["variants"] == want["pca"]["variants"]
    got, expect = (pca.unpack(v["pca"]["loadings"]) for v in (vocab, want))
    np.testing.assert_allclose(got, expect, atol=1e-5)  # the same genomes: the same components


def test_evaluation_on_another_build_is_refused(plink_cohort, tmp_path):
    import json

    from medweave.data.prepare import PrepareConfig, prepare

    _, vocab = prepare_plink(plink_cohort, tmp_path, sources=["pgs"])
    meta = json.loads((plink_cohort / "metadata/dataset.json").read_text())
    meta["medweave"]["genome_build"] = "GRCh37"  # the evaluation cohort was called on the old build
    (plink_cohort / "metadata/dataset.json").write_text(json.dumps(meta))
    genomics = {"sources": ["pgs"], "pgs_ambiguous": "keep"}
    cfg = PrepareConfig(task="cvd_onset_1y", modalities=("genomics",), genomics=genomics)
    with pytest.raises(
        MedweaveError, match=r"genotypes on GRCh37, but the model's score PGS999999 was matched on"
    ):
        prepare(plink_cohort, tmp_path / "eval", cfg, vocab)
