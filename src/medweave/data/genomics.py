"""The genomics modality in the prepared cache: variants, expression and external embeddings.

What reaches the model is one vector per subject, the concatenation of the configured sources in
a fixed order (``data.genomics.sources``; null = every source the cohort has, fixed at fit time):

    variants     standardised alt-allele dosages of the variants that pass QC on the train split
    expression   normalised expression per gene (cpm / log1p / zscore, in the configured order)
    embeddings   the external model's vector, z-scored (provenance recorded, checked at eval)

A subject has the modality when any source has them; a source a subject lacks (or a missing call)
is 0, the train mean after standardisation. Every statistic (variant QC, means, SDs, gene and
variant lists) is fitted on the train split and kept in the vocabulary, so evaluation maps a
cohort the same way. VCF samples reach subjects through genomics/sample_map.{tsv,parquet}
(sample, subject_id) when there is one; otherwise a sample name is the subject_id.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.readers import embeddings as emb_reader
from medweave.data.readers import expression as expr_reader
from medweave.data.readers import vcf
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

SOURCES = ("variants", "expression", "embeddings")
TRANSFORMS = ("cpm", "log1p", "zscore")
ARRAYS = {"variants": "genomics", "expression": "genomics_expression", "embeddings": "genomics_embeddings"}


@dataclass(frozen=True)
class GenomicsOptions:
    """``data.genomics`` (configs/data/cohort.yaml says what each key does)."""

    sources: tuple[str, ...] | None = None
    sample_map: str | None = None
    dosage_field: str = "auto"
    min_call_rate: float = 0.0
    min_maf: float = 0.0
    expression_orientation: str = "auto"
    expression_transform: tuple[str, ...] = ("zscore",)
    embeddings_transform: tuple[str, ...] = ("zscore",)

    @classmethod
    def from_dict(cls, options: dict | None) -> GenomicsOptions:
        options = dict(options or {})
        known = [f.name for f in fields(cls)]
        for key in options:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean '{near[0]}'?" if near else ""
                raise MedweaveError(f"data.genomics.{key}: unknown option; valid: {known}.{hint}")
        for key in ("sources", "expression_transform", "embeddings_transform"):
            if options.get(key) is not None:
                options[key] = tuple(options[key])
        opts = cls(**options)
        problems = [
            f"sources: '{s}' is not one of {list(SOURCES)}" for s in opts.sources or () if s not in SOURCES
        ]
        for key in ("expression_transform", "embeddings_transform"):
            problems += [
                f"{key}: '{t}' is not one of {list(TRANSFORMS)}"
                for t in getattr(opts, key)
                if t not in TRANSFORMS
            ]
        if "cpm" in opts.embeddings_transform or "log1p" in opts.embeddings_transform:
            problems.append("embeddings_transform: only zscore applies to embeddings")
        for key in ("min_call_rate", "min_maf"):
            if not 0.0 <= getattr(opts, key) <= (1.0 if key == "min_call_rate" else 0.5):
                problems.append(
                    f"{key}={getattr(opts, key)}: expected 0..{1.0 if key == 'min_call_rate' else 0.5}"
                )
        if opts.dosage_field not in vcf.FIELDS:
            problems.append(f"dosage_field={opts.dosage_field}: expected one of {list(vcf.FIELDS)}")
        if problems:
            raise MedweaveError("data.genomics: " + "; ".join(problems))
        return opts


def variant_files(root: Path) -> list[Path]:
    """genomics/variants.vcf.gz (or .bcf) and the per-chromosome files under genomics/variants/."""
    single = [root / p for p in (c.VARIANTS_VCF, c.VARIANTS_BCF) if (root / p).is_file()]
    folder = root / c.VARIANTS_DIR
    per_chrom = (
        [p for p in folder.iterdir() if p.is_file() and p.name.endswith((".vcf.gz", ".vcf", ".bcf"))]
        if folder.is_dir()
        else []
    )

    def natural(p: Path) -> list:  # chr2 before chr10
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]

    return single + sorted(per_chrom, key=natural)


def sample_map_file(root: Path, opts: GenomicsOptions) -> Path | None:
    if opts.sample_map:
        path = root / opts.sample_map
        if not path.resolve().is_relative_to(Path(root).resolve()):
            raise MedweaveError(  # files inside the cohort are what the cache key hashes
                f"data.genomics.sample_map={opts.sample_map}: expected a path inside the cohort {root}"
            )
        if not path.is_file():
            raise MedweaveError(f"data.genomics.sample_map={opts.sample_map}: no such file under {root}")
        return path
    return next((root / p for p in c.SAMPLE_MAPS if (root / p).is_file()), None)


def available_sources(root: Path) -> list[str]:
    have = {
        "variants": bool(variant_files(root)),
        "expression": (root / c.EXPRESSION).is_file(),
        "embeddings": (root / c.EMBEDDINGS).is_file(),
    }
    return [s for s in SOURCES if have[s]]


class SampleNames:
    """Sample name -> subject_id, through the sample map when there is one.

    Faults (samples or subjects listed twice, subjects outside the cohort, map rows naming no
    sample of the VCFs) go through ``bad``; their rows are left out. Names and IDs are never
    printed: rows and sample columns are named by number.
    """

    def __init__(self, root: Path, opts: GenomicsOptions, cohort: set[int] | None, bad: BadInput):
        self.path = sample_map_file(root, opts)
        self.cohort = cohort
        self.bad = bad
        self.map: dict[str, int] | None = None
        if self.path is None:
            return
        table = self._read(self.path)
        samples = [None if s is None else str(s) for s in table.column("sample").to_pylist()]
        subjects = np.asarray(table.column("subject_id").fill_null(-1).to_numpy(), np.int64)
        keep = np.array([s is not None for s in samples]) & (subjects >= 0)
        self._fault_rows(~keep, "sample/subject_id", "empty; expected a sample name and a subject_id")
        for values, what, other in (
            (np.array(samples, object).astype(str), "sample", "subject"),
            (subjects.astype(str), "subject_id", "sample"),
        ):
            _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
            self._fault_rows(
                keep & (counts[inverse] > 1),
                what,
                f"{what} listed twice (mapped to two {other}s); expected one row per {what}",
            )
            keep &= counts[inverse] == 1
        outside = keep & ~np.isin(subjects, list(cohort)) if cohort is not None else np.zeros_like(keep)
        self._fault_rows(outside, "subject_id", f"subject_id matches no subject in {c.SUBJECT_SPLITS}")
        keep &= ~outside
        self.map = {samples[i]: int(subjects[i]) for i in np.flatnonzero(keep)}
        self._rows = {samples[i]: int(i) for i in np.flatnonzero(keep)}

    def _read(self, path: Path) -> pa.Table:
        try:
            if path.suffix == ".parquet":
                table = pq.read_table(path)
            else:
                from pyarrow import csv

                table = csv.read_csv(
                    path,
                    parse_options=csv.ParseOptions(delimiter="\t"),
                    convert_options=csv.ConvertOptions(column_types={"sample": pa.string()}),
                )
        except (pa.ArrowException, OSError) as err:
            raise MedweaveError(
                f"{path}: not readable ({err}); expected columns sample, subject_id"
            ) from None
        c.require_columns(table, ("sample", "subject_id"), path)
        if not pa.types.is_integer(table.schema.field("subject_id").type):
            raise MedweaveError(
                f"{path}: column subject_id has type {table.schema.field('subject_id').type}; "
                "expected integers"
            )
        return table

    def _fault_rows(self, mask: np.ndarray, field: str, expected: str) -> None:
        rows = np.flatnonzero(mask)
        if len(rows):
            self.bad.fault(self.path, f"row {rows[0]}, field {field}", expected, count=len(rows))

    def check_samples_exist(self, vcf_samples: set[str]) -> None:
        """A map row naming a sample that no VCF holds is a fault (a typo, or the wrong VCF)."""
        if self.map is None:
            return
        unknown = sorted(self._rows[s] for s in self.map if s not in vcf_samples)
        if unknown:
            self.bad.fault(
                self.path,
                f"row {unknown[0]}, field sample",
                "names a sample that no VCF/BCF under genomics/ holds",
                count=len(unknown),
            )
            for s in [s for s in self.map if s not in vcf_samples]:
                del self.map[s]

    def subject(self, name: str) -> int | None:
        """subject_id of a sample (or subject_id text); None: not a cohort subject."""
        if self.map is not None and name in self.map:
            return self.map[name]
        text = name.strip()
        if text.isdigit() and (self.cohort is None or int(text) in self.cohort):
            return int(text)
        return None

    def vcf_subjects(self, path: Path | str, samples: list[str]) -> np.ndarray:
        """subject_id per VCF sample column; -1 for samples left out (faults, or not in the map)."""
        ids = np.array([-1 if (s := self.subject(n)) is None else s for n in samples], np.int64)
        if self.map is not None:  # samples outside the map belong to other studies
            return ids
        unknown = np.flatnonzero(ids < 0)
        if len(unknown):
            self.bad.fault(
                path,
                f"sample {unknown[0]}",
                f"sample name is not a subject_id of {c.SUBJECT_SPLITS} "
                "(and there is no genomics/sample_map.tsv)",
                count=len(unknown),
            )
        return ids


def _cohort(root: Path) -> set[int]:
    return set(
        pq.read_table(root / c.SUBJECT_SPLITS, columns=["subject_id"]).column("subject_id").to_pylist()
    )


def _rows_of(subject_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in the sorted labelled subjects, whether it is one) for each id."""
    row = np.clip(np.searchsorted(subject_ids, ids), 0, max(len(subject_ids) - 1, 0))
    return row, (ids >= 0) & (subject_ids[row] == ids)


def prepare_genomics(root, subject_ids, train, vocab, out, options=None, lenient=False) -> np.ndarray:
    """Write the configured sources' arrays under ``out``; return which subjects have any of them."""
    opts = GenomicsOptions.from_dict(options)
    bad = BadInput(lenient)
    if "variants" in vocab and "genomics_sources" not in vocab:
        raise MedweaveError(
            "the checkpoint's genomics vocabulary is from an older medweave (before dosages in 1/50 "
            "allele and variant QC): retrain the model with this version"
        )
    sources = vocab.get("genomics_sources") or list(opts.sources or available_sources(root))
    sources = [s for s in SOURCES if s in sources]
    if not sources:
        raise MedweaveError(
            f"{root}/genomics: no variants ({c.VARIANTS_VCF} or {c.VARIANTS_DIR}/*.vcf.gz|*.bcf), "
            f"{c.EXPRESSION} or {c.EMBEDDINGS}; expected at least one for the genomics modality"
        )
    names = SampleNames(root, opts, _cohort(root), bad)
    present = np.zeros(len(subject_ids), bool)
    fitting = "genomics_sources" not in vocab
    if "variants" in sources:
        present |= _prepare_variants(root, subject_ids, train, vocab, out, opts, names, bad, fitting)
    if "expression" in sources:
        present |= _prepare_expression(root, subject_ids, train, vocab, out, opts, names, bad, fitting)
    if "embeddings" in sources:
        present |= _prepare_embeddings(root, subject_ids, train, vocab, out, opts, bad, fitting)
    vocab["genomics_sources"] = sources
    return present


def _prepare_variants(root, subject_ids, train, vocab, out, opts, names, bad, fitting) -> np.ndarray:
    files = variant_files(root)
    if not files:
        raise MedweaveError(
            f"cohort '{root}' has no {c.VARIANTS_VCF} and no {c.VARIANTS_DIR}/*.vcf.gz|*.bcf "
            "(needed for data.genomics.sources: variants)"
        )
    read = vcf.read_many(files, opts.dosage_field, bad)
    names.check_samples_exist(set(read.samples))
    sample_subject = names.vcf_subjects(files[0] if len(files) == 1 else root / c.VARIANTS_DIR, read.samples)
    if names.map is not None and (outside := int((sample_subject < 0).sum())):
        log.info(
            "%d of %d VCF samples are not in the sample map (not in this cohort)", outside, len(read.samples)
        )
    row, known = _rows_of(subject_ids, sample_subject)
    if fitting:
        has = np.zeros(len(subject_ids), bool)
        has[row[known]] = True
        fit = known & train[row]
        if not fit.any():
            raise MedweaveError(
                f"{files[0]}: no VCF sample is a train-split subject; variant QC and standardisation "
                "are fitted on train genomes (check the sample names or genomics/sample_map.tsv)"
            )
        d = read.dosages[fit]
        called = d >= 0
        call_rate = called.mean(axis=0)
        alt = np.where(called, d, 0).sum(axis=0) / np.maximum(called.sum(axis=0), 1) / vcf.DOSAGE_SCALE
        af = alt / 2.0
        maf = np.minimum(af, 1.0 - af)
        passing = (call_rate >= opts.min_call_rate) & (maf >= opts.min_maf) & (called.sum(axis=0) > 0)
        if not passing.any():
            raise MedweaveError(
                f"{files[0]}: no variant passes QC on the train split (min_call_rate={opts.min_call_rate}, "
                f"min_maf={opts.min_maf}; {len(read.variant_ids)} variants read, best call rate "
                f"{call_rate.max():.2f}, best MAF {maf.max():.3f}); lower data.genomics.min_call_rate/min_maf"
            )
        log.info("variant QC on train: %d of %d variants kept", int(passing.sum()), len(passing))
        take = np.flatnonzero(passing)
        dose = np.where(called[:, take], d[:, take], np.nan).astype(np.float32) / vcf.DOSAGE_SCALE
        mean = np.nanmean(dose, axis=0)
        sd = np.nanstd(dose, axis=0)
        vocab["variants"] = [read.variant_ids[j] for j in take]
        vocab["variant_mean"] = mean.round(6).tolist()
        vocab["variant_sd"] = np.where(sd > 1e-6, sd, 1.0).round(6).tolist()
        vocab["dosage_scale"] = vcf.DOSAGE_SCALE
        vocab["variant_qc"] = {
            "min_call_rate": opts.min_call_rate,
            "min_maf": opts.min_maf,
            "read": len(read.variant_ids),
            "kept": len(take),
        }
    else:  # the training variants, in training order; a variant this cohort lacks stays missing
        col = {v: j for j, v in enumerate(read.variant_ids)}
        take = np.array([col.get(v, -1) for v in vocab["variants"]], np.int64)
    full = np.full((len(subject_ids), len(take)), vcf.MISSING, np.int8)
    found = take >= 0
    full[np.ix_(row[known], np.flatnonzero(found))] = read.dosages[np.ix_(known, take[found])]
    np.save(out / f"{ARRAYS['variants']}.npy", full)
    present = np.zeros(len(subject_ids), bool)
    present[row[known]] = True
    return present


def _transform(values: np.ndarray, steps, rows_fit, mean_key, sd_key, vocab, path) -> np.ndarray:
    """Apply cpm / log1p / zscore in order; zscore uses train statistics kept in ``vocab``."""
    for step in steps:
        if step == "cpm":
            total = np.nansum(values, axis=1, keepdims=True)
            values = values / np.where(total > 0, total, 1.0) * 1e6
        elif step == "log1p":
            values = np.log1p(values)
        elif step == "zscore":
            if mean_key not in vocab:
                fit = values[rows_fit]
                if not len(fit):
                    raise MedweaveError(
                        f"{path}: no train-split subject has a row; zscore is fitted on train"
                    )
                with np.errstate(all="ignore"):
                    mean = np.nan_to_num(np.nanmean(fit, axis=0), nan=0.0)
                    sd = np.nan_to_num(np.nanstd(fit, axis=0), nan=1.0)
                vocab[mean_key] = mean.round(6).tolist()
                vocab[sd_key] = np.where(sd > 1e-6, sd, 1.0).round(6).tolist()
            values = (values - np.asarray(vocab[mean_key], np.float32)) / np.asarray(
                vocab[sd_key], np.float32
            )
    return values.astype(np.float32)


def _prepare_expression(root, subject_ids, train, vocab, out, opts, names, bad, fitting) -> np.ndarray:
    path = c.require_file(root, c.EXPRESSION, "data.genomics.sources: expression")
    expr = expr_reader.read_expression(path, names.subject, opts.expression_orientation, bad)
    if fitting:
        vocab["genes"] = list(expr.genes)
        vocab["expression_transform"] = list(opts.expression_transform)
    steps = list(vocab["expression_transform"])
    values = expr.values
    if {"cpm", "log1p"} & set(steps):
        negative = (values < 0).any(axis=1)
        rows = np.flatnonzero(negative)
        if len(rows):
            bad.fault(
                path,
                f"subject {rows[0]} (in file order)",
                f"negative expression value; expected counts >= 0 for {steps}",
                count=len(rows),
            )
            expr = expr_reader.Expression(expr.subjects[~negative], expr.genes, values[~negative])
            values = expr.values
    if steps[:1] == ["cpm"]:  # the library size counts every gene of the file: before the alignment
        total = np.nansum(values, axis=1, keepdims=True)
        values = values / np.where(total > 0, total, 1.0) * 1e6
        steps = steps[1:]
    col = {g: j for j, g in enumerate(expr.genes)}
    take = np.array([col.get(g, -1) for g in vocab["genes"]], np.int64)
    aligned = np.where(take >= 0, values[:, np.maximum(take, 0)], np.nan).reshape(len(values), len(take))
    row, known = _rows_of(subject_ids, expr.subjects)
    fit_rows = np.flatnonzero(known & train[row])
    z = _transform(aligned, steps, fit_rows, "gene_mean", "gene_sd", vocab, path)
    full = np.zeros((len(subject_ids), len(take)), np.float32)
    full[row[known]] = np.nan_to_num(z[known], nan=0.0)
    np.save(out / f"{ARRAYS['expression']}.npy", full)
    present = np.zeros(len(subject_ids), bool)
    present[row[known]] = True
    return present


def _prepare_embeddings(root, subject_ids, train, vocab, out, opts, bad, fitting) -> np.ndarray:
    path = c.require_file(root, c.EMBEDDINGS, "data.genomics.sources: embeddings")
    emb = emb_reader.read_embeddings(path, bad)
    if fitting:
        vocab["embedding_provenance"] = emb.provenance
        vocab["embedding_dim"] = int(emb.values.shape[1])
        vocab["embeddings_transform"] = list(opts.embeddings_transform)
    elif emb.provenance != vocab["embedding_provenance"] or emb.values.shape[1] != vocab["embedding_dim"]:
        raise MedweaveError(
            f"{path}: embeddings from {emb.provenance} ({emb.values.shape[1]} values), but the model was "
            f"trained on {vocab['embedding_provenance']} ({vocab['embedding_dim']} values); "
            "expected the same model and version"
        )
    row, known = _rows_of(subject_ids, emb.subjects)
    outside = ~np.isin(emb.subjects, list(_cohort(root)))
    if outside.any():
        rows = np.flatnonzero(outside)
        bad.fault(
            path,
            f"row {rows[0]}, field subject_id",
            f"matches no subject in {c.SUBJECT_SPLITS}",
            count=len(rows),
        )
        known &= ~outside
    fit_rows = np.flatnonzero(known & train[row])
    z = _transform(
        emb.values,
        vocab["embeddings_transform"],
        fit_rows,
        "embedding_mean",
        "embedding_sd",
        vocab,
        path,
    )
    full = np.zeros((len(subject_ids), vocab["embedding_dim"]), np.float32)
    full[row[known]] = z[known]
    np.save(out / f"{ARRAYS['embeddings']}.npy", full)
    present = np.zeros(len(subject_ids), bool)
    present[row[known]] = True
    return present


# ---- what the batch and the encoder see ----


def sources_of(vocab: dict) -> list[str]:
    return vocab.get("genomics_sources", ["variants"])


def width(vocab: dict) -> int:
    """Length of the genomics vector: variants, then genes, then embedding values."""
    sizes = {
        "variants": lambda: len(vocab["variants"]),
        "expression": lambda: len(vocab["genes"]),
        "embeddings": lambda: vocab["embedding_dim"],
    }
    return sum(sizes[s]() for s in sources_of(vocab))


def features(arrays: dict[str, np.ndarray], vocab: dict, rows: np.ndarray) -> np.ndarray:
    """float32 [B, width(vocab)]: the sources concatenated; 0 where a call or a source is missing."""
    parts = []
    for source in sources_of(vocab):
        a = arrays[ARRAYS[source]][rows]
        if source == "variants":
            d = a.astype(np.float32)
            scale = vocab.get("dosage_scale", 1)
            mean = np.asarray(vocab["variant_mean"], np.float32)
            z = (d / scale - mean) / np.asarray(vocab["variant_sd"], np.float32)
            a = np.where(d < 0, 0.0, z)
        parts.append(np.asarray(a, np.float32))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def array_names(folder: Path) -> tuple[str, ...]:
    """The genomics arrays a prepared cache holds."""
    return tuple(name for name in ARRAYS.values() if (Path(folder) / f"{name}.npy").exists())


# ---- medweave-validate ----


class _Collect(BadInput):
    """A lenient BadInput that records each fault as a validation problem instead of logging it."""

    def __init__(self, add: Callable[[Path | str, str, str], None]):
        super().__init__(lenient=True)
        self.add = add

    def fault(self, file, where, expected, count=1) -> None:
        more = f" ({count} rows in all)" if count > 1 else ""
        self.add(file, where, expected + more)


def check_genomics(root: Path, add, counts: dict, split_ids) -> None:
    """Report every genomics fault through ``add(path, where, message)`` (validate.py)."""
    root = Path(root)
    bad = _Collect(add)
    cohort = set(np.asarray(split_ids).tolist()) if split_ids is not None else None  # None: not checked

    def guard(path, step):
        try:
            return step()
        except MedweaveError as err:
            text = str(err)
            add(path, "file", text.split(": ", 1)[1] if text.startswith(f"{path}: ") else text)
            return None

    try:
        opts = GenomicsOptions()
        names = SampleNames(root, opts, cohort, bad)
    except MedweaveError as err:
        add(root / "genomics", "sample map", str(err))
        return
    samples: dict[str, None] = {}  # every file's samples, in first-seen order
    for path in variant_files(root):
        found = guard(path, lambda p=path: vcf.read_samples(p))
        if found is None:
            continue
        indexed = any(Path(f"{path}{ext}").exists() for ext in (".tbi", ".csi"))
        if path.name.endswith((".vcf.gz", ".bcf")) and not indexed:
            add(
                path,
                "index",
                "no .tbi or .csi index beside the VCF (make one with tabix -p vcf or bcftools index)",
            )
        names.vcf_subjects(path, found)
        samples.update(dict.fromkeys(found))
    if samples:
        counts["genomes"] = len(samples)
        names.check_samples_exist(set(samples))
    if (root / c.EXPRESSION).is_file():
        path = root / c.EXPRESSION
        expr = guard(path, lambda: expr_reader.read_expression(path, names.subject, "auto", bad))
        if expr is not None:
            counts["expression_profiles"] = len(expr.subjects)
    if (root / c.EMBEDDINGS).is_file():
        path = root / c.EMBEDDINGS
        found = guard(path, lambda: emb_reader.read_embeddings(path, bad))
        if found is not None:
            counts["genomic_embeddings"] = len(found.subjects)
            outside = np.flatnonzero(~np.isin(found.subjects, list(cohort or ())))
            if len(outside) and cohort is not None:
                add(path, "field subject_id", f"{len(outside)} embedding(s) match no subject in the splits")
