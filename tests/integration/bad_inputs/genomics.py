"""Broken genomics inputs: VCF/BCF files, the sample map, expression matrices and embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data import contract as c
from medweave.data.store import open_arrays
from tests.integration.bad_inputs import Case, prepare_step

MODALITIES = ("ehr_codes", "genomics")


def vcf_text(cohort: Path) -> str:
    import pysam

    with pysam.BGZFile(str(cohort / c.VARIANTS_VCF), "rb") as f:
        return f.read().decode()


def write_vcf(path: Path, text: str, index: bool = True) -> Path:
    import pysam

    path.parent.mkdir(parents=True, exist_ok=True)
    plain = path.with_name(path.name.removesuffix(".gz"))
    plain.write_text(text)
    pysam.tabix_compress(str(plain), str(path), force=True)
    plain.unlink()
    if index:
        pysam.tabix_index(str(path), preset="vcf", force=True)
    return path


def split_header(text: str) -> tuple[list[str], list[str], list[str]]:
    """(meta lines, the #CHROM line's fields, record lines)."""
    lines = text.rstrip("\n").split("\n")
    meta = [x for x in lines if x.startswith("##")]
    columns = next(x for x in lines if x.startswith("#CHROM")).split("\t")
    return meta, columns, [x for x in lines if not x.startswith("#")]


def join(meta, columns, records) -> str:
    return "\n".join([*meta, "\t".join(columns), *records]) + "\n"


def remember(work: Path, **facts) -> None:
    """What check_lenient needs to know (it sees only the cache folder, work/cache/<key>)."""
    (work / "facts.json").write_text(json.dumps(facts))


def facts(cache: Path) -> dict:
    return json.loads((Path(cache).parent.parent / "facts.json").read_text())


def subjects(cache: Path) -> dict:
    s = np.load(Path(cache) / "subjects.npz")
    return dict(zip(s["subject_id"].tolist(), s["present_genomics"].tolist(), strict=True))


def vocab(cache: Path) -> dict:
    return json.loads((Path(cache) / "vocab.json").read_text())


# ---- the cases ----


def truncated_bgzip(cohort, work):
    meta, columns, records = split_header(vcf_text(cohort))
    many = [r.replace("\tsv", f"\tcopy{k}_sv", 1) for k in range(60) for r in records]  # several BGZF blocks
    many = [
        "\t".join([f[0], str(int(f[1]) + 10_000_000 * k), *f[2:]])
        for k, r in enumerate(many)
        for f in [r.split("\t")]
    ]
    path = write_vcf(cohort / c.VARIANTS_VCF, join(meta, columns, many), index=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return prepare_step(cohort, work, MODALITIES)


def samples_match_no_subject(cohort, work):
    meta, columns, records = split_header(vcf_text(cohort))
    renamed = [int(s) for s in columns[9:12]]
    columns[9:12] = ["NA12878", "NA12891", "NA12892"]  # lab sample names, and no sample map
    write_vcf(cohort / c.VARIANTS_VCF, join(meta, columns, records))
    remember(work, absent=renamed, present=[int(s) for s in columns[12:]])
    return prepare_step(cohort, work, MODALITIES)


def check_samples_skipped(cache):
    present, f = subjects(cache), facts(cache)
    assert not any(present.get(s, False) for s in f["absent"])
    assert sum(present.get(s, False) for s in f["present"]) > 0


def _sample_map(cohort, work, extra_rows):
    """Sample names S<k> in the VCF, mapped back to the subjects through genomics/sample_map.tsv."""
    meta, columns, records = split_header(vcf_text(cohort))
    ids = columns[9:]
    columns[9:] = [f"S{k}" for k in range(len(ids))]
    write_vcf(cohort / c.VARIANTS_VCF, join(meta, columns, records))
    rows = [(f"S{k}", s) for k, s in enumerate(ids)] + extra_rows(ids)
    (cohort / "genomics/sample_map.tsv").write_text(
        "sample\tsubject_id\n" + "".join(f"{a}\t{b}\n" for a, b in rows)
    )
    return ids


def sample_map_unknown_sample(cohort, work):
    cohort_ids = pq.read_table(cohort / c.SUBJECT_SPLITS).column("subject_id").to_pylist()

    def not_sequenced(ids):  # a cohort subject whose sample is in no VCF
        return [("S_not_sequenced", next(s for s in cohort_ids if str(s) not in ids))]

    ids = _sample_map(cohort, work, not_sequenced)
    remember(work, present=[int(s) for s in ids])
    return prepare_step(cohort, work, MODALITIES)


def check_all_mapped(cache):
    present = subjects(cache)
    assert all(present.get(s, True) for s in facts(cache)["present"])


def sample_mapped_to_two_subjects(cohort, work):
    ids = _sample_map(cohort, work, lambda ids: [("S0", ids[1])])  # S0 -> ids[0] and ids[1]
    remember(work, absent=[int(ids[0]), int(ids[1])], present=[int(s) for s in ids[2:]])
    return prepare_step(cohort, work, MODALITIES)


def sample_called_twice_in_two_files(cohort, work):
    """Per-chromosome files where one sample has the same site in both, with different calls."""
    meta, columns, records = split_header(vcf_text(cohort))
    (cohort / c.VARIANTS_VCF).unlink()
    (cohort / (c.VARIANTS_VCF + ".tbi")).unlink()
    half = len(records) // 2
    write_vcf(cohort / c.VARIANTS_DIR / "chr1.vcf.gz", join(meta, columns, records[:half]))
    second = records[half:] + [records[0]]  # the first site again, for the same samples
    write_vcf(cohort / c.VARIANTS_DIR / "chr1_part2.vcf.gz", join(meta, columns, sorted_records(second)))
    return prepare_step(cohort, work, MODALITIES)


def sorted_records(records):
    return sorted(records, key=lambda r: int(r.split("\t")[1]))


def check_first_call_kept(cache):
    assert len(vocab(cache)["variants"]) > 0


def _expression(cohort, n_genes=4):
    splits = pq.read_table(cohort / c.SUBJECT_SPLITS).column("subject_id").to_numpy()
    rng = np.random.default_rng(0)
    return splits, {f"GENE{j}": rng.normal(size=len(splits)) for j in range(n_genes)}


def expression_non_numeric_column(cohort, work):
    ids, genes = _expression(cohort)
    table = pa.table({"subject_id": ids, **genes, "GENE_NOTE": ["high"] * len(ids)})
    pq.write_table(table, cohort / c.EXPRESSION)
    return prepare_step(cohort, work, ("genomics",), genomics={"sources": ["variants", "expression"]})


def check_column_left_out(cache):
    assert vocab(cache)["genes"] == [f"GENE{j}" for j in range(4)]


def expression_subject_twice(cohort, work):
    ids, genes = _expression(cohort)
    table = pa.table({"subject_id": ids, **genes})
    pq.write_table(pa.concat_tables([table, table.slice(5, 1)]), cohort / c.EXPRESSION)
    remember(work, twice=int(ids[5]))
    return prepare_step(cohort, work, ("genomics",), genomics={"sources": ["expression"]})


def check_twice_left_out(cache):
    assert subjects(cache).get(facts(cache)["twice"], False) is False


def genes_by_subjects_unknown_column(cohort, work):
    ids, genes = _expression(cohort)
    values = np.stack(list(genes.values()))
    table = pa.table(
        {"gene": list(genes), **{str(s): values[:, k] for k, s in enumerate(ids)}, "S_x": values[:, 0]}
    )
    pq.write_table(table, cohort / c.EXPRESSION)
    return prepare_step(cohort, work, ("genomics",), genomics={"sources": ["expression"]})


def check_every_labelled_subject_kept(cache):
    """The unknown column is left out; every labelled subject keeps its profile of all 4 genes."""
    assert all(subjects(cache).values())
    assert np.asarray(open_arrays(Path(cache))["genomics_expression"]).shape[1] == 4


PROVENANCE = {"model": "gene-embedder", "version": "0.3", "source": "https://example.org/model"}


def _embeddings(cohort, lengths=None, provenance=PROVENANCE):
    ids = pq.read_table(cohort / c.SUBJECT_SPLITS).column("subject_id").to_numpy()
    rng = np.random.default_rng(1)
    lengths = lengths or [8] * len(ids)
    vectors = [rng.normal(size=n).astype(np.float32) for n in lengths]
    table = pa.table({"subject_id": ids, "embedding": pa.array(vectors, pa.list_(pa.float32()))})
    pq.write_table(table.replace_schema_metadata(provenance), cohort / c.EMBEDDINGS)
    return ids


def embeddings_unequal_length(cohort, work):
    ids = pq.read_table(cohort / c.SUBJECT_SPLITS).column("subject_id").to_numpy()
    lengths = [8] * len(ids)
    lengths[7] = 5
    _embeddings(cohort, lengths)
    remember(work, short=int(ids[7]))
    return prepare_step(cohort, work, ("genomics",), genomics={"sources": ["embeddings"]})


def check_short_left_out(cache):
    assert subjects(cache).get(facts(cache)["short"], False) is False
    assert vocab(cache)["embedding_dim"] == 8


def embeddings_without_provenance(cohort, work):
    _embeddings(cohort, provenance=None)
    return prepare_step(cohort, work, ("genomics",), genomics={"sources": ["embeddings"]})


def no_variant_passes_qc(cohort, work):
    """Half the genomes have no calls at all: no site reaches a call rate of 0.9."""
    meta, columns, records = split_header(vcf_text(cohort))
    half = 9 + (len(columns) - 9) // 2
    records = ["\t".join(f[:9] + ["./."] * (half - 9) + f[half:]) for f in (r.split("\t") for r in records)]
    write_vcf(cohort / c.VARIANTS_VCF, join(meta, columns, records))
    return prepare_step(cohort, work, MODALITIES, genomics={"min_call_rate": 0.9})


def plink_from_vcf(cohort: Path, chromosomes=(1, 2, 3), names=None) -> list[str]:
    """The cohort's VCF rewritten as PLINK 2 sets per chromosome (a genome centre's hand-out)."""
    from medweave.data.readers import plink, vcf
    from medweave.data.readers.genotypes import VariantTable

    read = vcf.read_dosages(cohort / c.VARIANTS_VCF)
    (cohort / c.VARIANTS_VCF).unlink()
    (cohort / (c.VARIANTS_VCF + ".tbi")).unlink()
    samples = names or read.samples
    parts = np.array_split(np.arange(len(read.variant_ids)), len(chromosomes))
    for chrom, index in zip(chromosomes, parts, strict=True):
        fields = [read.variant_ids[i].split(":") for i in index]
        table = VariantTable(
            np.full(len(index), str(chrom)),
            np.array([int(f[1]) for f in fields]),
            np.array([f"v{i}" for i in index]),
            np.array([f[2] for f in fields]),
            np.array([f[3] for f in fields]),
        )
        hard = np.where(read.dosages[:, index] < 0, -9, read.dosages[:, index] // vcf.DOSAGE_SCALE).T
        (cohort / c.VARIANTS_DIR).mkdir(exist_ok=True)
        plink.write_pgen(cohort / c.VARIANTS_DIR / f"chr{chrom}.pgen", samples, table, [hard])
    return read.samples


def plink_sample_file_disagrees_with_map(cohort, work):
    """A sample map written for the lab's names; the genome centre's .psam renamed three samples."""
    subjects = plink_from_vcf(cohort, names=None)
    lab = [f"LAB{k:04d}" for k in range(len(subjects))]
    (cohort / "genomics/sample_map.tsv").write_text(
        "sample\tsubject_id\n" + "".join(f"{n}\t{s}\n" for n, s in zip(lab, subjects, strict=True))
    )
    centre = [f"GC{k:04d}" if k < 3 else n for k, n in enumerate(lab)]
    for psam in (cohort / c.VARIANTS_DIR).glob("*.psam"):
        psam.write_text("#IID\n" + "".join(f"{n}\n" for n in centre))
    return prepare_step(cohort, work, MODALITIES, genomics={"sources": ["pcs"], "pcs": 2})


def plink_chromosome_missing(cohort, work):
    plink_from_vcf(cohort, chromosomes=(1, 2, 4))
    return prepare_step(cohort, work, MODALITIES, genomics={"sources": ["pcs"], "pcs": 2})


def pgs_on_another_build(cohort, work):
    plink_from_vcf(cohort)
    meta = json.loads((cohort / c.DATASET_METADATA).read_text())
    meta.setdefault("medweave", {})["genome_build"] = "GRCh38"
    (cohort / c.DATASET_METADATA).write_text(json.dumps(meta))
    (cohort / c.PGS_DIR).mkdir(parents=True)
    (cohort / c.PGS_DIR / "PGS000018.txt").write_text(
        "#pgs_id=PGS000018\n#pgs_name=old\n#trait_reported=CAD\n#genome_build=GRCh37\n"
        "rsID\tchr_name\tchr_position\teffect_allele\tother_allele\teffect_weight\n"
        "rs1\t1\t12345\tA\tG\t0.1\n"
    )
    return prepare_step(cohort, work, MODALITIES, genomics={"sources": ["pgs"]})


CASES = [
    Case(
        "plink-sample-file-disagrees-with-sample-map",
        plink_sample_file_disagrees_with_map,
        ("sample_map.tsv", "row 0, field sample", "names a sample that no"),
    ),
    Case(
        "plink-chromosome-missing-from-set",
        plink_chromosome_missing,
        ("genomics/variants", "chromosome 3 missing", "one .pgen set per chromosome"),
        lenient=False,
    ),
    Case(
        "pgs-scoring-file-on-another-build",
        pgs_on_another_build,
        ("PGS000018.txt", "GRCh37", "genotypes are on GRCh38"),
        lenient=False,
    ),
    Case(
        "truncated-bgzip-vcf",
        truncated_bgzip,
        ("variants.vcf.gz", "record", "complete, valid VCF"),
        lenient=False,
    ),
    Case(
        "vcf-samples-match-no-subject",
        samples_match_no_subject,
        ("variants.vcf.gz", "sample 0", "not a subject_id"),
        check_lenient=check_samples_skipped,
    ),
    Case(
        "sample-map-names-unknown-sample",
        sample_map_unknown_sample,
        ("sample_map.tsv", "field sample", "names a sample that no VCF"),
        check_lenient=check_all_mapped,
    ),
    Case(
        "sample-mapped-to-two-subjects",
        sample_mapped_to_two_subjects,
        ("sample_map.tsv", "field sample", "listed twice"),
        check_lenient=check_samples_skipped,
    ),
    Case(
        "sample-called-twice-in-two-files",
        sample_called_twice_in_two_files,
        ("chr1_part2.vcf.gz", "sample 0, variant", "already called in chr1.vcf.gz"),
        check_lenient=check_first_call_kept,
    ),
    Case(
        "expression-non-numeric-column",
        expression_non_numeric_column,
        ("expression.parquet", "column GENE_NOTE", "expected numeric"),
        check_lenient=check_column_left_out,
    ),
    Case(
        "expression-subject-twice",
        expression_subject_twice,
        ("expression.parquet", "field subject_id", "already listed"),
        check_lenient=check_twice_left_out,
    ),
    Case(
        "expression-genes-by-subjects-unknown-column",
        genes_by_subjects_unknown_column,
        ("expression.parquet", "field name", "names no subject"),
        check_lenient=check_every_labelled_subject_kept,
    ),
    Case(
        "embeddings-unequal-length",
        embeddings_unequal_length,
        ("embeddings.parquet", "row 7, field embedding", "expected 8 values"),
        check_lenient=check_short_left_out,
    ),
    Case(
        "embeddings-without-provenance",
        embeddings_without_provenance,
        ("embeddings.parquet", "provenance field(s)", "model", "expected non-empty strings"),
        lenient=False,
    ),
    Case(
        "no-variant-passes-qc",
        no_variant_passes_qc,
        ("variants.vcf.gz", "no variant passes QC", "min_call_rate=0.9"),
        lenient=False,
    ),
]
