"""The VCF/BCF reader (cyvcf2): calls of every shape pipelines write, and real files from cyvcf2's tests."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.data.bad_input import BadInput
from medweave.data.readers.vcf import DOSAGE_SCALE, read_dosages, read_many
from medweave.errors import MedweaveError

S = DOSAGE_SCALE
HEADER = """##fileformat=VCFv4.2
##contig=<ID=chr2,length=100000>
##contig=<ID=chr3,length=100000>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=DS,Number=A,Type=Float,Description="Alt dosage">
##FORMAT=<ID=GL,Number=G,Type=Float,Description="log10 genotype likelihoods">
##FORMAT=<ID=PL,Number=G,Type=Integer,Description="Phred genotype likelihoods">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{samples}
"""
# Phased and unphased GT, a multi-allelic site (1/2 counts two ALT alleles), missing and
# half-missing calls, a haploid call, then records that carry only DS, only GL, only PL.
BODY = """chr2\t100\trs1\tA\tG\t.\tPASS\t.\tGT\t0|0\t0|1\t1|1
chr2\t200\t.\tC\tT,G\t.\tPASS\t.\tGT\t1/2\t./.\t0/2
chr2\t300\trs3\tG\tA\t.\tPASS\t.\tGT\t1|.\t0/0\t1
chr2\t400\t.\tT\tC\t.\tPASS\t.\tDS\t0.25\t.\t1.9
chr2\t500\t.\tT\tC,G\t.\tPASS\t.\tDS\t0.5,0.5\t0,0\t.,1
chr2\t600\t.\tG\tA\t.\tPASS\t.\tGL\t0,-10,-10\t-10,0,-10\t.
chr2\t700\t.\tG\tA\t.\tPASS\t.\tPL\t0,0,0\t100,100,0\t.
"""


def write(path, body=BODY, samples=("11", "12", "13")):
    path.write_text(HEADER.format(samples="\t".join(samples)) + body)
    return path


def bgzip(src, dst, index=True):
    import pysam

    pysam.tabix_compress(str(src), str(dst), force=True)
    if index:
        pysam.tabix_index(str(dst), preset="vcf", force=True)
    return dst


def test_every_call_shape_becomes_an_alt_dosage(tmp_path):
    got = read_dosages(write(tmp_path / "v.vcf"))
    assert got.samples == ["11", "12", "13"]
    assert got.variant_ids[:2] == ["chr2:100:A:G", "chr2:200:C:T,G"]
    assert got.dosages.dtype == np.int8 and got.dosages.shape == (3, 7)
    expected = np.array(
        [
            [0, 1, 2],  # phased GT
            [2, np.nan, 1],  # multi-allelic: 1/2 carries two ALT alleles; ./. is missing
            [np.nan, 0, 1],  # half-missing 1|. is missing; a haploid 1 is one ALT
            [0.25, np.nan, 1.9],  # DS where there is no GT
            [1.0, 0.0, 1.0],  # DS Number=A: summed over ALTs; a missing ALT counts as absent
            [0.0, 1.0, np.nan],  # GL: the likely genotype dominates the expected dosage
            [1.0, 2.0, np.nan],  # PL: flat likelihoods give the prior mean, 1
        ]
    ).T
    scaled = np.where(np.isnan(expected), -1, np.rint(np.nan_to_num(expected) * S))
    np.testing.assert_allclose(got.dosages, scaled, atol=1)


def test_dosage_field_can_be_forced(tmp_path):
    body = "chr2\t100\t.\tA\tG\t.\tPASS\t.\tGT:DS\t0/1:0.8\t1/1:1.7\t./.:0.1\n"
    path = write(tmp_path / "v.vcf", body)
    assert read_dosages(path).dosages[:, 0].tolist() == [S, 2 * S, -1]
    assert read_dosages(path, "DS").dosages[:, 0].tolist() == [round(0.8 * S), round(1.7 * S), round(0.1 * S)]
    with pytest.raises(MedweaveError, match="FORMAT has no PL"):
        read_dosages(path, "PL")


def test_per_chromosome_files_merge_by_sample(tmp_path):
    """A sample missing from one file is missing there; its other calls are kept."""
    a = write(tmp_path / "a.vcf", "chr2\t100\t.\tA\tG\t.\tPASS\t.\tGT\t0/1\t1/1\n", ("11", "12"))
    b = write(tmp_path / "b.vcf", "chr3\t100\t.\tA\tG\t.\tPASS\t.\tGT\t1/1\t0/0\n", ("13", "11"))
    got = read_many([bgzip(a, tmp_path / "chr2.vcf.gz"), bgzip(b, tmp_path / "chr3.vcf.gz")])
    assert got.samples == ["11", "12", "13"]
    assert got.variant_ids == ["chr2:100:A:G", "chr3:100:A:G"]
    np.testing.assert_array_equal(got.dosages, [[S, 0], [2 * S, -1], [-1, 2 * S]])


def test_a_site_in_two_batches_merges_but_a_sample_called_twice_is_a_fault(tmp_path):
    a = write(tmp_path / "a.vcf", "chr2\t100\t.\tA\tG\t.\tPASS\t.\tGT\t0/1\t1/1\n", ("11", "12"))
    b = write(tmp_path / "b.vcf", "chr2\t100\t.\tA\tG\t.\tPASS\t.\tGT\t1/1\t0/0\n", ("13", "14"))
    got = read_many([a, b])  # two sequencing batches of the same site
    assert got.variant_ids == ["chr2:100:A:G"] and got.dosages[:, 0].tolist() == [S, 2 * S, 2 * S, 0]
    c = write(tmp_path / "c.vcf", "chr2\t100\t.\tA\tG\t.\tPASS\t.\tGT\t0/0\t1/1\n", ("15", "12"))
    with pytest.raises(
        MedweaveError, match=r"c.vcf: sample 1, variant chr2:100:A:G: already called in a.vcf"
    ):
        read_many([a, b, c])
    got = read_many([a, b, c], bad=BadInput(lenient=True))
    assert got.dosages[:, 0].tolist() == [S, 2 * S, 2 * S, 0, 0]  # the first file's call is kept


def test_truncated_bgzip_names_the_file_and_record(tmp_path):
    lines = "".join(f"chr2\t{100 + i}\t.\tA\tG\t.\tPASS\t.\tGT\t0/1\t1/1\t0/0\n" for i in range(20000))
    whole = bgzip(write(tmp_path / "v.vcf", lines), tmp_path / "v.vcf.gz", index=False)
    cut = tmp_path / "cut.vcf.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])
    with pytest.raises(MedweaveError, match=r"cut.vcf.gz: record \d+: not readable"):
        read_dosages(cut)


def test_garbage_names_the_file(tmp_path):
    path = tmp_path / "broken.vcf.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(MedweaveError, match="broken.vcf.gz"):
        read_dosages(path)


def cyvcf2_test_file(name):
    from tests.public_files import package_files

    return package_files("cyvcf2==0.30.1", f"cyvcf2/tests/{name}")[0]


@pytest.mark.parametrize(
    ("name", "samples", "variants"),
    [("test.vcf.gz", 189, 115), ("test.snpeff.bcf", 4, 10), ("o.vcf.gz", 3, 2082)],
)
def test_real_files_match_htslib_via_pysam(name, samples, variants):
    """Real VCF/BCF files from cyvcf2's test data, checked call by call against pysam's reading."""
    import pysam

    path = cyvcf2_test_file(name)
    got = read_dosages(path)
    assert got.dosages.shape == (samples, variants)
    expected = []
    with pysam.VariantFile(str(path)) as vcf:
        for record in vcf:
            row = []
            for call in record.samples.values():
                gt = call.get("GT") or (None,)
                row.append(-1 if None in gt else S * sum(a > 0 for a in gt))
            expected.append(row)
    np.testing.assert_array_equal(got.dosages, np.array(expected, np.int8).T)
    assert (got.dosages == -1).any()  # these files have missing calls


def test_plain_gzip_without_index_reads_as_bgzf_does(tmp_path, caplog):
    import gzip
    import logging

    plain = write(tmp_path / "v.vcf")
    with gzip.open(tmp_path / "plain.vcf.gz", "wb") as f:
        f.write(plain.read_bytes())
    want = read_dosages(bgzip(plain, tmp_path / "bgzf.vcf.gz"))
    with caplog.at_level(logging.INFO, logger="medweave.data.readers.vcf"):
        got = read_dosages(tmp_path / "plain.vcf.gz")
    np.testing.assert_array_equal(got.dosages, want.dosages)
    assert got.variant_ids == want.variant_ids
    assert got.notes == ["plain gzip, not BGZF: read by streaming"] and "streaming" in caplog.text
    assert want.notes == []


def test_header_slips_are_read_with_a_warning(tmp_path, caplog):
    import logging

    header = HEADER.replace("##contig=<ID=chr3,length=100000>\n", "")  # chr3 used below, not declared
    header = header.replace("ID=DS,Number=A", "ID=DS,Number=G")  # the wrong Number
    header = header.replace(
        '##FORMAT=<ID=GL,Number=G,Type=Float,Description="log10 genotype likelihoods">\n', ""
    )
    body = (
        "chr2\t100\t.\tA\tG\t.\tPASS\t.\tDS\t0.5\t1.5\t.\n"
        "chr3\t5\t.\tA\tG\t.\tPASS\t.\tGL\t0,-10,-10\t-10,0,-10\t.\n"
    )
    path = tmp_path / "slips.vcf"
    path.write_text(header.format(samples="11\t12\t13") + body)
    with caplog.at_level(logging.WARNING, logger="medweave.data.readers.vcf"):
        got = read_dosages(path)
    assert got.dosages.tolist() == [[S // 2, 0], [3 * S // 2, S], [-1, -1]]
    assert got.notes == [
        "FORMAT DS declared Number=G; expected A or 1",
        "contig chr3 not in the header",
        "FORMAT GL not declared in the header (read as numbers)",
    ]
    assert "contig chr3 not in the header" in caplog.text
