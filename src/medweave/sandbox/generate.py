"""Write a synthetic cohort in the contract layout (see medweave.data.contract).

Subjects are generated in shards of ``shard_size`` by ``workers`` processes; each shard writes
its part files and images, and the parts are then joined into the final files (assemble.py).
Memory is bounded by the shard size, and the output is the same for a seed whatever the shard
size or worker count, because every person draws from their own stream (subject.py). The cohort
is written into a temporary sibling folder and moved into place at the end: an interrupted run
leaves nothing half-written under ``out``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from medweave import __version__
from medweave.data import contract as c
from medweave.errors import MedweaveError
from medweave.folders import replace_folder
from medweave.sandbox import assemble, ehr, genomics, notes, registry, registry_genomes
from medweave.sandbox.latent import Disease, default_diseases
from medweave.sandbox.oracle import oracle_report
from medweave.sandbox.subject import OPTIONAL_MODALITIES, draw_subject

GENOMICS_FORMATS = ("vcf", "plink2", "plink1")


@dataclass
class SandboxConfig:
    """What to generate. Missing rates are the share of subjects without that modality."""

    n_subjects: int = 2000
    seed: int = 0
    horizon_days: int = 365
    n_variants: int = 1000
    ld_rho: float = 0.8
    image_size: int = 128
    volumes: bool = False  # also a CT-like volume per imaged subject, as NIfTI and a DICOM series
    volume_shape: tuple = (32, 64, 64)  # z, y, x
    expression_genes: int = 0  # > 0: genomics/expression.parquet for sequenced subjects
    genomics_format: str = "vcf"  # vcf | plink2 | plink1 (one set per chromosome, + a PGS scoring file)
    genome_chromosomes: int = 1  # the panel split into this many chromosomes (PLINK formats)
    missing: dict = field(default_factory=lambda: {"text": 0.25, "image": 0.5, "genomics": 0.75})
    missing_health_effect: float = 0.0  # 0: missing at random; > 0: the ill have more data
    follow_up_end: str = "2025-12-31"  # data cutoff: survival labels are censored here
    loss_per_year: float = 0.02  # emigration and death from other causes
    split_fractions: dict = field(
        default_factory=lambda: {c.TRAIN_SPLIT: 0.7, c.TUNING_SPLIT: 0.15, c.HELD_OUT_SPLIT: 0.15}
    )
    diseases: dict[str, Disease] = field(default_factory=default_diseases)
    shard_size: int = 1000  # subjects per unit of work: bounds memory, never changes the output
    workers: int = 0  # processes; 0 uses every core this process may run on
    # EHR only, life-long registry history drawn vectorised (registry.py): no notes, images, genomes
    registry_history: bool = False
    registry_start: str = "1977-01-01"  # history from this date, or birth if later, to the record's end
    events_per_person: float = 300.0  # mean history events per person (heavy-tailed; median lower)
    genome_subjects: int = 0  # registry_history: this many, drawn at random, sequenced (registry_genomes.py)
    # registry_history: conditions raise the hazard of others, labs follow them (comorbidity.py);
    # false: the conditions drawn independently given m, as registry cohorts were before issue 15
    comorbidity: bool = True

    def check(self) -> None:
        problems = []
        if self.n_subjects < 10:
            problems.append(f"n_subjects={self.n_subjects}: need at least 10")
        if self.genomics_format not in GENOMICS_FORMATS:
            problems.append(
                f"genomics_format={self.genomics_format}: expected one of {list(GENOMICS_FORMATS)}"
            )
        if not 1 <= self.genome_chromosomes <= min(22, self.n_variants):
            problems.append(
                f"genome_chromosomes={self.genome_chromosomes}: expected 1..22 (and <= n_variants)"
            )
        if self.n_variants < 1:
            problems.append(f"n_variants={self.n_variants}: need at least 1")
        for name, rate in self.missing.items():
            if name not in OPTIONAL_MODALITIES:
                problems.append(f"missing.{name}: only {', '.join(OPTIONAL_MODALITIES)} can be missing")
            elif not 0 <= rate < 1:
                problems.append(f"missing.{name}={rate}: expected a rate in [0, 1)")
        if abs(sum(self.split_fractions.values()) - 1) > 1e-6:
            problems.append(f"split_fractions {self.split_fractions} must sum to 1")
        if self.shard_size < 1 or self.workers < 0:
            problems.append(f"shard_size={self.shard_size}, workers={self.workers}: expected >= 1 and >= 0")
        if self.registry_history:
            if self.volumes or self.expression_genes:
                problems.append(
                    "registry_history=true writes an EHR-only cohort: "
                    "set volumes=false and expression_genes=0"
                )
            if not 0 <= self.genome_subjects <= self.n_subjects:
                problems.append(
                    f"genome_subjects={self.genome_subjects}: expected 0..n_subjects ({self.n_subjects})"
                )
            if not self.events_per_person > 0:
                problems.append(f"events_per_person={self.events_per_person}: expected > 0")
            try:
                if (
                    not np.datetime64("1900-01-01")
                    <= np.datetime64(self.registry_start)
                    < np.datetime64("2021-01-01")
                ):
                    problems.append(f"registry_start={self.registry_start}: expected a date before 2021")
            except ValueError:
                problems.append(f"registry_start={self.registry_start}: expected a date like 1977-01-01")
        elif self.genome_subjects:
            problems.append(
                f"genome_subjects={self.genome_subjects} needs registry_history=true; the default "
                "sandbox sequences a share of its subjects (missing.genomics)"
            )
        if not self.diseases:
            problems.append("diseases is empty: the cohort needs at least one outcome")
        for name, disease in self.diseases.items():
            try:
                disease.liability(dict.fromkeys(disease.weights, 0.0))
            except ValueError as err:
                problems.append(f"diseases.{name}: {err}")
        try:
            if np.datetime64(self.follow_up_end) <= np.datetime64("2022-01-01"):
                problems.append(f"follow_up_end={self.follow_up_end}: must be after 2022 (prediction times)")
        except ValueError:
            problems.append(f"follow_up_end={self.follow_up_end}: expected a date like 2025-12-31")
        if problems:
            raise MedweaveError("bad sandbox config: " + "; ".join(problems))

    @property
    def horizon(self) -> str:
        h = self.horizon_days
        return f"{h // 365}y" if h % 365 == 0 else f"{h}d"

    def task_names(self, disease: str) -> tuple[str, str]:
        """(binary task, survival task) label names for a disease, e.g. cvd_onset_1y, cvd_survival."""
        return f"{disease}_onset_{self.horizon}", f"{disease}_survival"


def generate_cohort(out: str | Path, config: SandboxConfig, overwrite: bool = False) -> Path:
    """Generate the cohort and return its folder; the oracle figures are in dataset.json."""
    config.check()
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MedweaveError(f"out={out} exists and is not empty; pass overwrite=true to replace it")
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _write(tmp, config)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(root: Path, cfg: SandboxConfig) -> None:
    panel = genomics.make_panel(cfg.n_variants, cfg.ld_rho, cfg.seed)
    expression = (
        genomics.make_expression_model(panel, cfg.expression_genes, cfg.seed)
        if cfg.expression_genes
        else None
    )
    id_rng = np.random.default_rng([cfg.seed, 7])
    subject_ids = np.sort(id_rng.choice(10**9, size=cfg.n_subjects, replace=False) + 10**9)
    splits = _assign_splits(cfg, id_rng)
    (root / "parts").mkdir(parents=True)

    if cfg.registry_history:
        registry.rate_scale(cfg)  # calibrated once, here: forked workers inherit the cached constant
        if cfg.genome_subjects:
            registry_genomes.founders(cfg, panel)  # drawn once, here, for the same reason
    starts = range(0, cfg.n_subjects, cfg.shard_size)
    jobs = [(cfg, panel, expression, root, s, subject_ids[s : s + cfg.shard_size]) for s in starts]
    shards = [result for _, result in sorted(_run_shards(jobs, cfg), key=lambda r: r[0])]

    truth = {k: np.concatenate([s["truth"][k] for s in shards]) for k in shards[0]["truth"]}
    truth["subject_id"] = subject_ids
    workers = cfg.workers or len(os.sched_getaffinity(0))
    assemble.write_events(root, [s["events"] for s in shards], subject_ids, workers)
    if not cfg.registry_history:  # a registry cohort has no notes nor images, genomes on request
        _write_genomes(root, cfg, panel, shards)
    elif cfg.genome_subjects:
        rows = registry_genomes.write_genomes(root, cfg, panel, subject_ids, workers)
        truth["has_genomics"][rows] = True
    if expression is not None:
        schema = _expression_schema(expression.genes)
        assemble.write_table_parts(root / c.EXPRESSION, [s["expression"] for s in shards], schema)
    shutil.rmtree(root / "parts")

    _write_splits(root, subject_ids, splits)
    _write_codes(root, cfg)
    if not cfg.registry_history:
        _write_imaging_index(root, [row for s in shards for row in s["images"]])
    times = np.concatenate([s["prediction_time"] for s in shards])
    oracle = {}
    for name, disease in cfg.diseases.items():
        binary, survival = cfg.task_names(name)
        onset = np.concatenate([s["outcomes"][name][0] for s in shards])
        days = np.concatenate([s["outcomes"][name][1] for s in shards])
        seen = np.concatenate([s["outcomes"][name][2] for s in shards])
        _write_labels(root, binary, subject_ids, times, {"boolean_value": onset})
        _write_labels(root, survival, subject_ids, times, {"boolean_value": seen, "float_value": days})
        report = oracle_report(
            _factor_view(truth),
            registry.outcome_disease(cfg, disease),
            truth[f"risk_{name}"],
            splits,
            onset,
            (days, seen),
        )
        oracle[binary] = {
            k: report[k] for k in ("auroc", "auroc_given_available", "auroc_by_modality", "prevalence")
        }
        oracle[survival] = {
            k: report[k]
            for k in (
                "c_index",
                "c_index_given_available",
                "c_index_by_modality",
                "event_rate",
                "median_follow_up_days",
            )
        }
    hba1c = np.concatenate([s["hba1c"] for s in shards])
    measured = ~np.isnan(hba1c)  # only subjects with a measurement get a regression label
    _write_labels(
        root, f"hba1c_{cfg.horizon}", subject_ids[measured], times[measured], {"float_value": hba1c[measured]}
    )
    first = np.concatenate([s["first"] for s in shards])
    _write_labels(root, f"first_diagnosis_{cfg.horizon}", subject_ids, times, {"categorical_value": first})
    (root / "ground_truth").mkdir()
    pq.write_table(pa.table(truth), root / c.GROUND_TRUTH)
    _write_dataset_metadata(root, cfg, oracle)


def _write_genomes(root: Path, cfg: SandboxConfig, panel, shards: list[dict]) -> None:
    genome_ids = [int(x) for s in shards for x in s["genome_ids"]]
    genotype_parts = [s["genotypes"] for s in shards]
    codes = assemble.part_codes(genotype_parts)
    if cfg.genomics_format == "vcf":
        assemble.write_vcf(root / c.VARIANTS_VCF, panel, genome_ids, codes)
    else:
        chroms = cfg.genome_chromosomes
        assemble.write_plink(root / c.VARIANTS_DIR, panel, genome_ids, codes, cfg.genomics_format, chroms)
    for part in genotype_parts:
        part.unlink()
    if cfg.genomics_format != "vcf":
        write_pgs_files(root, cfg, panel)


def write_pgs_files(root: Path, cfg: SandboxConfig, panel) -> None:
    """The panel's true effects, one PGS Catalog scoring file per score (PLINK formats)."""
    chroms = cfg.genome_chromosomes
    for score in panel.effects:
        assemble.write_pgs_file(root / c.PGS_DIR / f"PGS_sandbox_{score}.txt", panel, score, chroms, cfg.seed)


def _run_shards(jobs: list, cfg: SandboxConfig):
    """Yield (start, result) as shards finish, in worker processes when there is more than one."""
    workers = cfg.workers or len(os.sched_getaffinity(0))
    bar = tqdm(total=cfg.n_subjects, desc="sandbox subjects", unit="subj")
    try:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                yield job[4], _shard(job)
                bar.update(len(job[5]))
            return
        # fork: spawn would re-run the caller's script, which then needs a __main__ guard; the
        # children use only numpy, pyarrow, pydicom and nibabel, which are safe after fork
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            futures = {pool.submit(_shard, job): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                yield job[4], future.result()
                bar.update(len(job[5]))
    finally:
        bar.close()


def _shard(job) -> dict:
    """Draw a shard's subjects; write their events, genotype and expression parts and images."""
    cfg, panel, expression, root, start, ids = job
    if cfg.registry_history:
        return _registry_shard(cfg, panel, root, start, ids)
    events, truth, images, genotypes, genome_ids, expr, times, extra = [], [], [], [], [], [], [], []
    outcomes: dict[str, list] = {name: [] for name in cfg.diseases}
    for offset, sid in enumerate(ids):
        subject = draw_subject(start + offset, int(sid), cfg, panel, expression, root)
        timed = sorted((e for e in subject.events if e[0] is not None), key=lambda e: e[0])
        events += [(int(sid), *e) for e in subject.events if e[0] is None] + [(int(sid), *e) for e in timed]
        truth.append(subject.truth)
        times.append(subject.prediction_time)
        extra.append(subject.extra_labels)
        images += [(int(sid), *row) for row in subject.image_rows]
        for name, value in subject.outcomes.items():
            outcomes[name].append(value)
        if subject.genotype is not None:
            genotypes.append(subject.genotype)
            genome_ids.append(int(sid))
            if subject.expression is not None:
                expr.append(subject.expression)
    parts = root / "parts"
    tag = f"{start:010d}"
    result = {
        "events": parts / f"events-{tag}.parquet",
        "genotypes": parts / f"genotypes-{tag}.npy",
        "expression": parts / f"expression-{tag}.parquet",
        "truth": {k: np.array([t[k] for t in truth]) for k in truth[0]},
        "outcomes": {
            name: tuple(np.array(col) for col in zip(*rows, strict=True)) for name, rows in outcomes.items()
        },
        "images": images,
        "genome_ids": np.array(genome_ids, np.int64),
        "prediction_time": np.array(times, "datetime64[us]"),
        "hba1c": np.array([np.nan if e["hba1c"] is None else e["hba1c"] for e in extra]),
        "first": np.array([e["first"] for e in extra], dtype=object),
    }
    pq.write_table(_events_table(events), result["events"])
    codes = np.stack(genotypes, axis=1) if genotypes else np.zeros((panel.n_variants, 0), np.uint8)
    np.save(result["genotypes"], np.ascontiguousarray(codes))  # [V, samples]: VCF rows read whole
    if expression is not None:
        values = np.stack(expr) if expr else np.zeros((0, len(expression.genes)), np.float32)
        table = {"subject_id": np.array(genome_ids, np.int64)} | dict(
            zip(expression.genes, values.T, strict=True)
        )
        pq.write_table(pa.table(table, schema=_expression_schema(expression.genes)), result["expression"])
    return result


def _registry_shard(cfg, panel, root: Path, start: int, ids: np.ndarray) -> dict:
    """An EHR-only shard from registry.py: its events part, and the rest in the shape _shard returns."""
    result = registry.draw_shard(cfg, panel, start, ids)
    path = root / "parts" / f"events-{start:010d}.arrow"  # Arrow IPC: written and read back fast
    table = result.pop("events")
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return result | {"events": path, "images": [], "genome_ids": np.zeros(0, np.int64), "genotypes": None}


def _expression_schema(genes: list[str]) -> pa.Schema:
    return pa.schema(
        [pa.field("subject_id", pa.int64(), nullable=False)] + [pa.field(g, pa.float32()) for g in genes]
    )


def _factor_view(truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The truth columns as the causes the disease model weighs (latent.FACTORS)."""
    return truth | {
        "age": (truth["age_years"] - 60.0) / 10.0,
        "has_ehr_codes": np.ones(len(truth["male"]), bool),
    }


def _assign_splits(cfg: SandboxConfig, rng: np.random.Generator) -> np.ndarray:
    names = list(cfg.split_fractions)
    return rng.choice(names, size=cfg.n_subjects, p=[cfg.split_fractions[n] for n in names])


def _ts(values) -> pa.Array:
    return pa.array([None if v is None else np.datetime64(v, "us") for v in values], pa.timestamp("us"))


def _events_table(events: list[tuple]) -> pa.Table:
    cols = list(zip(*events, strict=True))
    return pa.table(
        {
            "subject_id": pa.array(cols[0], pa.int64()),
            "time": _ts(cols[1]),
            "code": pa.array(cols[2], pa.string()),
            "numeric_value": pa.array([None if v is None else float(v) for v in cols[3]], pa.float32()),
            "text_value": pa.array(cols[4], pa.large_string()),
        },
        schema=c.EVENTS_SCHEMA,
    )


def _write_labels(root: Path, task: str, subject_ids: np.ndarray, times: np.ndarray, values: dict) -> None:
    """MEDS labels; survival tasks put days to event or censoring in float_value and whether the
    event was seen in boolean_value."""
    n = len(subject_ids)
    table = pa.table(
        {
            "subject_id": pa.array(subject_ids, pa.int64()),
            "prediction_time": pa.array(times, pa.timestamp("us")),
            "boolean_value": pa.array(values["boolean_value"], pa.bool_())
            if "boolean_value" in values
            else pa.nulls(n, pa.bool_()),
            "integer_value": pa.nulls(n, pa.int64()),
            "float_value": pa.array(values["float_value"], pa.float32())
            if "float_value" in values
            else pa.nulls(n, pa.float32()),
            "categorical_value": pa.array(values["categorical_value"].tolist(), pa.string())
            if "categorical_value" in values
            else pa.nulls(n, pa.string()),
        },
        schema=c.LABEL_SCHEMA,
    )
    (root / c.LABELS_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, c.label_path(root, task))


def _write_splits(root: Path, subject_ids: np.ndarray, splits: np.ndarray) -> None:
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"subject_id": subject_ids.astype(np.int64), "split": splits.astype(str)}, schema=c.SPLITS_SCHEMA
    )
    pq.write_table(table, root / c.SUBJECT_SPLITS)


def _write_codes(root: Path, cfg: SandboxConfig) -> None:
    codes = sorted(ehr.CODES) + [t for t in notes.NOTE_TYPES]
    desc = {
        **{k: v[0] for k, v in ehr.CODES.items()},
        **{t: f"Clinical note ({t[6:]})" for t in notes.NOTE_TYPES},
    }
    if cfg.registry_history:
        vocab = registry.cohort_vocabulary(cfg)
        codes, desc = sorted(vocab.codes.tolist()), vocab.descriptions
    parents = {k: v[1] for k, v in ehr.CODES.items()}
    table = pa.table(
        {
            "code": codes,
            "description": [desc[k] for k in codes],
            "parent_codes": [parents.get(k, []) for k in codes],
        },
        schema=c.CODES_SCHEMA,
    )
    pq.write_table(table, root / c.CODES_METADATA)


def _write_imaging_index(root: Path, rows: list[tuple]) -> None:
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 5
    table = pa.table(
        {
            "subject_id": pa.array(cols[0], pa.int64()),
            "time": _ts(cols[1]),
            "path": pa.array(cols[2], pa.string()),
            "modality": pa.array(cols[3], pa.string()),
            "view": pa.array(cols[4], pa.string()),
        },
        schema=c.IMAGING_SCHEMA,
    )
    (root / c.IMAGING_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / c.IMAGING_INDEX)


def _write_dataset_metadata(root: Path, cfg: SandboxConfig, oracle: dict) -> None:
    tasks = {}
    for name, disease in cfg.diseases.items():
        binary, survival = cfg.task_names(name)
        tasks[binary] = {"type": "binary", "horizon_days": cfg.horizon_days, "code": disease.code}
        tasks[survival] = {
            "type": "survival",
            "time_unit": "days",  # float_value: days to event or censoring; boolean_value: event
            "follow_up_end": cfg.follow_up_end,
            "code": disease.code,
        }
    tasks[f"hba1c_{cfg.horizon}"] = {"type": "regression", "unit": "mmol/mol", "code": ehr.HBA1C}
    tasks[f"first_diagnosis_{cfg.horizon}"] = {"type": "multiclass", "classes": ["none", *cfg.diseases]}
    meta = {
        "dataset_name": "medweave-sandbox",
        "dataset_version": f"seed{cfg.seed}-n{cfg.n_subjects}",
        "etl_name": "medweave-sandbox",
        "etl_version": __version__,
        "meds_version": "0.4",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "medweave": {
            "generator": "medweave.sandbox",
            "seed": cfg.seed,
            "n_subjects": cfg.n_subjects,
            "n_variants": cfg.n_variants,
            "genomics_format": cfg.genomics_format,
            "genome_build": "GRCh38",  # what the PGS files and the PLINK sets declare
            "modalities": [c.EHR_CODES] + [c.GENOMICS] * bool(cfg.genome_subjects)
            if cfg.registry_history
            else [m for m in c.MODALITIES if m != c.VOLUME or cfg.volumes],
            "extras": {"ct_volumes": cfg.volumes, "expression_genes": cfg.expression_genes},
            **(
                {
                    "registry_history": {
                        "start": cfg.registry_start,
                        "events_per_person": cfg.events_per_person,
                        "genome_subjects": cfg.genome_subjects,
                        "comorbidity": cfg.comorbidity,
                    }
                }
                if cfg.registry_history
                else {}
            ),
            "tasks": tasks,
            "missing": cfg.missing,
            "missing_health_effect": cfg.missing_health_effect,
            "oracle": oracle,
        },
    }
    (root / c.DATASET_METADATA).write_text(json.dumps(meta, indent=2))
