"""Genomes for a chosen subset of a registry cohort (registry_history=true genome_subjects=N):
written per chromosome as a genome centre hands them out, the same bytes whatever the sharding,
carrying the genetic risk the outcomes use, with population structure for the PCs."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from medweave.data.genomics import pca, pgs
from medweave.data.genomics.genotypes import Genotypes
from medweave.data.genomics.options import GenomicsOptions
from medweave.data.readers import plink, vcf
from medweave.errors import MedweaveError
from medweave.sandbox import genomics, registry, registry_genomes
from medweave.sandbox.generate import SandboxConfig, generate_cohort

SETTINGS = dict(
    n_subjects=300,
    registry_history=True,
    events_per_person=20,
    genome_subjects=120,
    n_variants=2500,
    genomics_format="plink2",
    genome_chromosomes=3,
    seed=3,
)


@pytest.fixture(scope="module")
def sequenced(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("rg") / "c", SandboxConfig(**SETTINGS, workers=1))


def _open(root):
    readers = [plink.PgenReader(p) for p in sorted((root / "genomics/variants").glob("*.pgen"))]
    n = len(readers[0].samples)
    return Genotypes(readers, [np.arange(n)] * len(readers), np.arange(n)), np.array(
        readers[0].samples, np.int64
    )


@pytest.mark.slow
def test_a_chosen_subset_gets_plink2_per_chromosome_carrying_its_genetic_risk(sequenced):
    names = sorted(p.name for p in (sequenced / "genomics/variants").iterdir())
    assert names == [f"chr{k}.{s}" for k in (1, 2, 3) for s in ("pgen", "psam", "pvar")]
    g, ids = _open(sequenced)
    truth = pl.read_parquet(sequenced / "ground_truth/risk.parquet").sort("subject_id")
    assert truth["has_genomics"].sum() == 120
    assert ids.tolist() == truth.filter(pl.col("has_genomics"))["subject_id"].to_list()
    assert sum(len(r.variants) for r in g.readers) == 2500
    opts = GenomicsOptions.from_dict({"pcs": 4, "pgs_ambiguous": "keep"})
    train = np.ones(len(ids), bool)
    score = pgs.fit_scores(g, [sequenced / "genomics/pgs/PGS_sandbox_cvd.txt"], train, opts, "GRCh38", {})
    genetic = truth.filter(pl.col("has_genomics"))["genetic_cvd"].to_numpy()
    assert np.corrcoef(score[:, 0], genetic)[0, 1] > 0.999  # the score the outcomes were drawn from
    # Four populations: three components stand out, and they tell the populations apart.
    vocab: dict = {}
    pcs = pca.fit_project(g, train, opts, vocab)
    ev = vocab["pca"]["explained_variance"]
    assert min(ev[:3]) > 2 * ev[3]
    cfg = SandboxConfig(**SETTINGS)
    rows = registry_genomes.genome_rows(cfg)
    pop = np.concatenate(
        [
            registry_genomes.mosaic(registry_genomes.founders(cfg, _panel(cfg)), cfg.seed, b, min(1000, 300))[
                0
            ]
            for b in range(1)
        ]
    )[rows]
    means = np.stack([pcs[pop == k, :3].mean(0) for k in range(4)])
    between = ((means[pop] - pcs[:, :3].mean(0)) ** 2).sum() / ((pcs[:, :3] - pcs[:, :3].mean(0)) ** 2).sum()
    assert between > 0.9
    g.close()


def _panel(cfg):
    return genomics.make_panel(cfg.n_variants, cfg.ld_rho, cfg.seed)


@pytest.mark.slow
def test_same_genomes_whatever_the_shards_and_workers_and_plink1_vcf_on_request(sequenced, tmp_path):
    many = generate_cohort(tmp_path / "many", SandboxConfig(**SETTINGS, workers=2, shard_size=70))
    for sub in ("genomics/variants", "genomics/pgs"):
        for p in sorted((sequenced / sub).iterdir()):
            assert (
                hashlib.md5(p.read_bytes()).digest()
                == hashlib.md5((many / sub / p.name).read_bytes()).digest()
            )
    g, _ = _open(sequenced)
    want = np.concatenate([b for _i, b in g.readers[0].blocks(10_000)])
    g.close()
    ids = np.array(plink.read_psam(sequenced / "genomics/variants/chr1.psam"), np.int64)
    subject_ids = np.zeros(SETTINGS["n_subjects"], np.int64)
    subject_ids[registry_genomes.genome_rows(SandboxConfig(**SETTINGS))] = ids  # only these are written
    for fmt in ("plink1", "vcf"):  # the writer alone: the EHR is the same
        cfg = SandboxConfig(**{**SETTINGS, "genomics_format": fmt})
        registry_genomes.write_genomes(tmp_path / fmt, cfg, _panel(cfg), subject_ids, workers=1)
    r = plink.BedReader(tmp_path / "plink1/genomics/variants/chr1.bed")
    np.testing.assert_array_equal(np.concatenate([b for _i, b in r.blocks(10_000)]), want)
    assert r.samples == [str(i) for i in ids]
    r.close()
    r = vcf.DosageReader(tmp_path / "vcf/genomics/variants.vcf.gz")
    got = np.concatenate([b for _i, b in r.blocks(10_000)])
    np.testing.assert_array_equal(got[: len(want)], want)
    r.close()


def test_genotype_codes_are_the_founder_segments_they_copy():
    cfg = SimpleNamespace(seed=1, genome_chromosomes=2, n_subjects=60, genome_subjects=40)
    panel = genomics.make_panel(3100, 0.8, 1)
    f = registry_genomes.founders(cfg, panel)
    index = registry_genomes.subset_mosaic(cfg, f, registry_genomes.genome_rows(cfg))
    codes = registry_genomes.genotype_codes(f, index)
    v = np.arange(900, 2300)  # crosses cells and the chromosome boundary
    cell = np.searchsorted(f.cell_start, v, side="right") - 1
    hap0, hap1 = f.haplotypes[index[:, 0, cell], v], f.haplotypes[index[:, 1, cell], v]
    np.testing.assert_array_equal(codes(900, 2300), (hap0 + 2 * hap1).T)
    np.testing.assert_array_equal(codes(900, 2300, dosage=True), (hap0 + hap1).T)
    # a person's score is their genotype's: what the outcomes use is what a PGS can recover
    scores = registry_genomes.block_scores(cfg, panel, 0, 60)
    dosage = codes(0, 3100, dosage=True).T.astype(float)
    mean, sd = f.moments["cvd"]
    rows = registry_genomes.genome_rows(cfg)
    np.testing.assert_allclose((dosage @ panel.effects["cvd"] - mean) / sd, scores["cvd"][rows], atol=1e-9)
    assert f.fresh[np.searchsorted(f.cell_start, 1550)]  # chromosome 2 starts a fresh founder


def test_genome_subjects_needs_a_registry_cohort_and_fits_in_it(tmp_path):
    with pytest.raises(MedweaveError, match="genome_subjects=5 needs registry_history=true"):
        generate_cohort(tmp_path / "a", SandboxConfig(genome_subjects=5))
    with pytest.raises(MedweaveError, match="genome_subjects=500: expected 0..n_subjects"):
        generate_cohort(
            tmp_path / "b", SandboxConfig(n_subjects=100, registry_history=True, genome_subjects=500)
        )


def test_scores_without_genomes_keep_the_registry_cohort_as_it_was():
    cfg = SandboxConfig(n_subjects=50, n_variants=40, registry_history=True)
    panel = _panel(cfg)
    before = registry.draw_block(cfg, panel, 0, 50)["truth"]["genetic_cvd"]
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0, 1)))
    registry.draw_people(rng, 50, cfg.loss_per_year)
    np.testing.assert_array_equal(before, registry.draw_genetic_scores(panel, rng, 50)["cvd"])
