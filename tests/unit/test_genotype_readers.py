"""PLINK 2, PLINK 1 and BGEN readers: round trips against each library's own writer (BGEN: the
format written by hand, as cbgen has no writer), blocks of selected variants, and bad file sets."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from medweave.data.readers import bgen, plink
from medweave.data.readers.genotypes import VariantTable, block_size
from medweave.errors import MedweaveError


def table(n, chrom="1"):
    rng = np.random.default_rng(n)
    bases = np.array(list("ACGT"))
    ref = rng.choice(bases, n)
    alt = bases[(np.searchsorted(bases, ref) + 1) % 4]
    return VariantTable(
        chrom=np.full(n, chrom),
        pos=np.arange(n) * 10 + 100,
        id=np.array([f"rs{i}" for i in range(n)]),
        ref=ref,
        alt=alt,
    )


def hardcalls(n_variants, n_samples, seed=0):
    g = np.random.default_rng(seed).integers(0, 3, (n_variants, n_samples)).astype(np.int8)
    g[0, 1] = -9
    return g


def dosage(g):
    return np.where(g < 0, np.nan, g).astype(np.float32)


def collect(reader, size, select=None):
    parts = list(reader.blocks(size, select))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.mark.parametrize("fmt", ["pgen", "bed"])
def test_plink_round_trip_in_blocks_and_selected(tmp_path, fmt):
    g, v = hardcalls(23, 7), table(23)
    samples = [f"S{i}" for i in range(7)]
    write, read = (
        (plink.write_pgen, plink.PgenReader) if fmt == "pgen" else (plink.write_bed, plink.BedReader)
    )
    write(tmp_path / f"x.{fmt}", samples, v, [g[:10], g[10:]])
    r = read(tmp_path / f"x.{fmt}")
    assert r.samples == samples
    assert r.variants.keys() == v.keys()
    index, d = collect(r, 5)
    np.testing.assert_array_equal(index, np.arange(23))
    np.testing.assert_array_equal(d, dosage(g))
    pick = np.array([0, 3, 4, 5, 20])
    index, d = collect(r, 2, pick)
    np.testing.assert_array_equal(d, dosage(g[pick]))
    r.close()


def test_a_psam_with_fid_column_and_a_chr_prefix(tmp_path):
    g, v = hardcalls(3, 2), table(3, chrom="chr7")
    plink.write_pgen(tmp_path / "x.pgen", ["a", "b"], v, [g])
    (tmp_path / "x.psam").write_text("#FID\tIID\tSEX\nf1\ta\t1\nf2\tb\t2\n")
    (tmp_path / "x.pvar").write_text("##fileformat=PVARv1.0\n" + (tmp_path / "x.pvar").read_text())
    r = plink.PgenReader(tmp_path / "x.pgen")
    assert r.samples == ["a", "b"] and set(r.variants.chrom) == {"7"}


def test_incomplete_or_inconsistent_file_sets_name_the_file(tmp_path):
    g, v = hardcalls(4, 3), table(4)
    plink.write_pgen(tmp_path / "x.pgen", ["a", "b", "c"], v, [g])
    (tmp_path / "x.psam").write_text("#IID\na\nb\n")
    with pytest.raises(MedweaveError, match=r"x.pgen: not a readable .pgen.*2 samples"):
        plink.PgenReader(tmp_path / "x.pgen")
    (tmp_path / "x.psam").unlink()
    with pytest.raises(MedweaveError, match=r"incomplete, \['x.psam'\] missing"):
        plink.PgenReader(tmp_path / "x.pgen")
    plink.write_bed(tmp_path / "y.bed", ["a", "b", "c"], v, [g])
    (tmp_path / "y.bim").write_text("1 rs0 0 100 A C\n")  # one variant short
    with pytest.raises(MedweaveError, match=r"y.bed: not a readable .bed"):
        plink.BedReader(tmp_path / "y.bed")


def write_bgen(path, samples, variants, probs, sample_block=True):
    """BGEN v1.2, layout 2, zlib (as UK Biobank ships it), 8-bit unphased probabilities [V, N, 3].

    nan = missing. (cbgen 1.0.6 misreads uncompressed layout-2 blocks, so tests compress.)
    """
    n = len(samples)
    blob = b""
    if sample_block:
        ids = b"".join(struct.pack("<H", len(s)) + s.encode() for s in samples)
        blob = struct.pack("<II", 8 + len(ids), n) + ids
    flags = 1 | (2 << 2) | ((1 << 31) if sample_block else 0)
    header = struct.pack("<IIII", 20, len(variants), n, 0)[:12] + b"bgen" + struct.pack("<I", flags)
    out = [struct.pack("<I", len(header) + len(blob)), header, blob]
    for v in range(len(variants)):
        vid = variants.id[v].encode()
        chrom = variants.chrom[v].encode()
        body = struct.pack("<H", len(vid)) + vid + struct.pack("<H", len(vid)) + vid
        body += struct.pack("<H", len(chrom)) + chrom + struct.pack("<IH", int(variants.pos[v]), 2)
        for allele in (variants.ref[v], variants.alt[v]):
            body += struct.pack("<I", len(allele)) + allele.encode()
        p = probs[v]
        missing = np.isnan(p).any(axis=1)
        ploidy = np.where(missing, 0x82, 0x02).astype(np.uint8).tobytes()
        q = np.rint(np.nan_to_num(p[:, :2]) * 255).astype(np.uint8).tobytes()
        geno = struct.pack("<IHBB", n, 2, 2, 2) + ploidy + struct.pack("<BB", 0, 8) + q
        packed = zlib.compress(geno)
        out += [body, struct.pack("<II", len(packed) + 4, len(geno)), packed]
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize("sample_block", [True, False])
def test_bgen_dosage_is_the_expected_second_allele_count(tmp_path, sample_block):
    v = table(5)
    samples = ["s0", "s1", "s2"]
    probs = np.zeros((5, 3, 3))
    probs[:, :, 0] = 1.0  # AA
    probs[1, 0] = [0.0, 1.0, 0.0]  # AB: 1
    probs[2, 2] = [0.0, 0.0, 1.0]  # BB: 2
    probs[3, 1] = [0.2, 0.4, 0.4]  # 0.4 + 0.8 = 1.2
    probs[4, 0] = np.nan  # missing
    write_bgen(tmp_path / "x.bgen", samples, v, probs, sample_block)
    if not sample_block:
        (tmp_path / "x.sample").write_text("ID_1 ID_2 missing\n0 0 0\ns0 s0 0\ns1 s1 0\ns2 s2 0\n")
    r = bgen.BgenReader(tmp_path / "x.bgen")
    assert r.samples == samples and r.variants.keys() == v.keys()
    _, d = collect(r, 2)
    expect = probs[..., 1] + 2 * probs[..., 2]
    np.testing.assert_allclose(d, expect, atol=1 / 255 * 2)
    assert np.isnan(d[4, 0]) and not np.isnan(d[4, 1:]).any()
    tmp = r._tmp
    r.close()
    assert not tmp.exists()  # the metafile never lands beside the cohort


def test_bgen_without_samples_anywhere_says_what_is_missing(tmp_path):
    write_bgen(tmp_path / "x.bgen", ["a"], table(1), np.ones((1, 1, 3)) / 3, sample_block=False)
    with pytest.raises(MedweaveError, match=r"no sample identifiers.*x.sample"):
        bgen.BgenReader(tmp_path / "x.bgen")


def test_block_size_keeps_a_block_within_the_budget():
    assert block_size(60_000) * 60_000 * 4 <= 64 * 2**20
    assert block_size(10) > 1000 and block_size(10**9) == 1
