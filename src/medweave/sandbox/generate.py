"""Write a synthetic cohort in the contract layout (see medweave.data.contract).

Every person draws from a child random stream keyed by their index, so a person's data depend
only on the seed and the index. The cohort is written into a temporary sibling folder and moved
into place at the end: an interrupted run leaves nothing half-written under ``out``.
"""

from __future__ import annotations

import json
import shutil
import uuid
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
from medweave.sandbox import ehr, genomics, imaging, notes
from medweave.sandbox.latent import LatentWeights, draw_person, onset_logit, sigmoid
from medweave.sandbox.oracle import modality_oracle_scores

TASK = "cvd_onset_1y"


@dataclass
class SandboxConfig:
    """What to generate. Missing rates are the share of subjects without that modality."""

    n_subjects: int = 2000
    seed: int = 0
    horizon_days: int = 365
    n_variants: int = 1000
    n_large_effect_variants: int = 6
    ld_rho: float = 0.8
    image_size: int = 128
    missing: dict = field(default_factory=lambda: {"text": 0.2, "image": 0.3, "genomics": 0.4})
    split_fractions: dict = field(
        default_factory=lambda: {c.TRAIN_SPLIT: 0.7, c.TUNING_SPLIT: 0.15, c.HELD_OUT_SPLIT: 0.15}
    )
    weights: LatentWeights = field(default_factory=LatentWeights)

    def check(self) -> None:
        problems = []
        if self.n_subjects < 10:
            problems.append(f"n_subjects={self.n_subjects}: need at least 10")
        for name, rate in self.missing.items():
            if name not in ("text", "image", "genomics"):
                problems.append(f"missing.{name}: only text, image and genomics can be missing")
            elif not 0 <= rate < 1:
                problems.append(f"missing.{name}={rate}: expected a rate in [0, 1)")
        if abs(sum(self.split_fractions.values()) - 1) > 1e-6:
            problems.append(f"split_fractions {self.split_fractions} must sum to 1")
        if problems:
            raise MedweaveError("bad sandbox config: " + "; ".join(problems))


def generate_cohort(out: str | Path, config: SandboxConfig, overwrite: bool = False) -> Path:
    """Generate the cohort and return its folder; the oracle AUROC is in dataset.json."""
    config.check()
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MedweaveError(f"out={out} exists and is not empty; pass overwrite=true to replace it")
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _write(tmp, config)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(root: Path, cfg: SandboxConfig) -> None:
    panel = genomics.make_panel(cfg.n_variants, cfg.n_large_effect_variants, cfg.ld_rho, cfg.seed)
    id_rng = np.random.default_rng([cfg.seed, 7])
    subject_ids = np.sort(id_rng.choice(10**9, size=cfg.n_subjects, replace=False) + 10**9)
    splits = _assign_splits(cfg, id_rng)
    seeds = np.random.SeedSequence(cfg.seed).spawn(cfg.n_subjects)

    events, labels, truth, image_rows, genotypes = [], [], [], [], {}
    for i in tqdm(range(cfg.n_subjects), desc="sandbox subjects", unit="subj"):
        rng = np.random.default_rng(seeds[i])
        sid = int(subject_ids[i])
        person = draw_person(rng)
        haplotypes = genomics.draw_genotype(panel, rng)
        genetic = genomics.polygenic_score(panel, haplotypes)
        risk = float(sigmoid(onset_logit(person, genetic, cfg.weights)))
        onset = rng.random() < risk
        onset_time = None
        if onset:
            onset_time = person.prediction_time + np.timedelta64(
                int(rng.integers(1, cfg.horizon_days * 86400)), "s"
            )
        has = {name: rng.random() >= cfg.missing.get(name, 0.0) for name in ("text", "image", "genomics")}

        visits = ehr.visit_times(person, rng, follow_up_days=cfg.horizon_days)
        person_events = ehr.draw_events(person, visits, onset_time, rng)
        if has["text"]:
            person_events += notes.draw_note_events(person, visits, onset, rng)
        events += [(sid, *event) for event in person_events]

        if has["image"]:
            study = person.prediction_time - np.timedelta64(int(rng.integers(1, 300)), "D")
            rel = f"cr/{uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i).hex}.dcm"
            imaging.write_dicom(
                root / c.IMAGING_DIR / rel,
                imaging.draw_radiograph(person.structural, cfg.image_size, rng),
                sid,
                study,
                uid_seed=cfg.seed * 10**7 + i,
            )
            image_rows.append((sid, study, rel, "CR", "PA"))
        if has["genomics"]:
            genotypes[sid] = haplotypes
        labels.append((sid, person.prediction_time, bool(onset)))
        truth.append(
            (
                sid,
                risk,
                genetic,
                person.metabolic,
                person.symptoms,
                person.structural,
                person.age,
                person.sex == "M",
                has["text"],
                has["image"],
                has["genomics"],
            )
        )

    _write_events(root, events)
    _write_labels(root, labels)
    _write_splits(root, subject_ids, splits)
    _write_codes(root)
    _write_imaging_index(root, image_rows)
    _write_vcf(root, panel, genotypes)
    oracle = _write_truth(root, truth, splits, labels, cfg.weights)
    _write_dataset_metadata(root, cfg, oracle)


def _assign_splits(cfg: SandboxConfig, rng: np.random.Generator) -> np.ndarray:
    names = list(cfg.split_fractions)
    return rng.choice(names, size=cfg.n_subjects, p=[cfg.split_fractions[n] for n in names])


def _ts(values) -> pa.Array:
    return pa.array([None if v is None else np.datetime64(v, "us") for v in values], pa.timestamp("us"))


def _write_events(root: Path, events: list[tuple]) -> None:
    events.sort(key=lambda e: (e[0], e[1] is not None, e[1] if e[1] is not None else 0))
    cols = list(zip(*events, strict=True))
    table = pa.table(
        {
            "subject_id": pa.array(cols[0], pa.int64()),
            "time": _ts(cols[1]),
            "code": pa.array(cols[2], pa.string()),
            "numeric_value": pa.array([None if v is None else float(v) for v in cols[3]], pa.float32()),
            "text_value": pa.array(cols[4], pa.large_string()),
        },
        schema=c.EVENTS_SCHEMA,
    )
    (root / c.EVENTS_DIR).mkdir(parents=True)
    pq.write_table(table, root / c.EVENTS_DIR / "0.parquet")


def _write_labels(root: Path, labels: list[tuple]) -> None:
    sid, t, y = zip(*labels, strict=True)
    n = len(sid)
    table = pa.table(
        {
            "subject_id": pa.array(sid, pa.int64()),
            "prediction_time": _ts(t),
            "boolean_value": pa.array(y, pa.bool_()),
            "integer_value": pa.nulls(n, pa.int64()),
            "float_value": pa.nulls(n, pa.float32()),
            "categorical_value": pa.nulls(n, pa.string()),
        },
        schema=c.LABEL_SCHEMA,
    )
    (root / c.LABELS_DIR).mkdir(parents=True)
    pq.write_table(table, c.label_path(root, TASK))


def _write_splits(root: Path, subject_ids: np.ndarray, splits: np.ndarray) -> None:
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"subject_id": subject_ids.astype(np.int64), "split": splits.astype(str)}, schema=c.SPLITS_SCHEMA
    )
    pq.write_table(table, root / c.SUBJECT_SPLITS)


def _write_codes(root: Path) -> None:
    codes = sorted(ehr.CODES) + [t for t in notes.NOTE_TYPES]
    desc = {
        **{k: v[0] for k, v in ehr.CODES.items()},
        **{t: f"Clinical note ({t[6:]})" for t in notes.NOTE_TYPES},
    }
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


def _write_vcf(root: Path, panel: genomics.VariantPanel, genotypes: dict[int, np.ndarray]) -> None:
    """A bgzipped, tabix-indexed VCF 4.2 with phased GT, one sample per sequenced subject."""
    import pysam

    samples = sorted(genotypes)
    plain = root / "genomics" / "variants.vcf"
    plain.parent.mkdir(parents=True)
    stacked = np.stack([genotypes[s] for s in samples], axis=0) if samples else None  # [S, 2, V]
    with open(plain, "w") as f:
        f.write("##fileformat=VCFv4.2\n")
        f.write(f"##source=medweave-sandbox {__version__}\n")
        f.write(f"##contig=<ID={panel.chrom},length={int(panel.positions[-1]) + 1000}>\n")
        f.write('##INFO=<ID=AF,Number=A,Type=Float,Description="Population alt allele frequency">\n')
        f.write('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
        f.write(
            "\t".join(
                ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *map(str, samples)]
            )
            + "\n"
        )
        for v in range(panel.n_variants):
            gts = (
                ""
                if stacked is None
                else "\t"
                + "\t".join(f"{a}|{b}" for a, b in zip(stacked[:, 0, v], stacked[:, 1, v], strict=True))
            )
            f.write(
                f"{panel.chrom}\t{panel.positions[v]}\tsv{v}\t{panel.ref[v]}\t{panel.alt[v]}"
                f"\t.\tPASS\tAF={panel.maf[v]:.4f}\tGT{gts}\n"
            )
    pysam.tabix_compress(str(plain), str(root / c.VARIANTS_VCF))
    pysam.tabix_index(str(root / c.VARIANTS_VCF), preset="vcf")
    plain.unlink()


TRUTH_COLUMNS = (
    "subject_id",
    "risk",
    "genetic",
    "metabolic",
    "symptoms",
    "structural",
    "age",
    "male",
    "has_text",
    "has_image",
    "has_genomics",
)


def _write_truth(root, truth, splits, labels, weights: LatentWeights) -> dict:
    """Save the true risk apart from the inputs; return the oracle AUROC per split, for the
    true risk and for each modality alone (see sandbox/oracle.py)."""
    from sklearn.metrics import roc_auc_score

    table = {name: np.array(col) for name, col in zip(TRUTH_COLUMNS, zip(*truth, strict=True), strict=True)}
    (root / "ground_truth").mkdir()
    pq.write_table(pa.table(table), root / c.GROUND_TRUTH)
    table["has_ehr_codes"] = np.ones(len(splits), bool)
    y = np.array([lab[2] for lab in labels])
    by_modality = modality_oracle_scores(table, weights)

    def auroc(score) -> dict:
        out = {}
        for split in c.SPLITS:
            sel = splits == split
            if sel.any() and 0 < y[sel].sum() < sel.sum():
                out[split] = round(float(roc_auc_score(y[sel], score[sel])), 4)
        return out

    return {
        "auroc": auroc(table["risk"]),
        "auroc_by_modality": {m: auroc(score) for m, score in by_modality.items()},
        "prevalence": round(float(y.mean()), 4),
    }


def _write_dataset_metadata(root: Path, cfg: SandboxConfig, oracle: dict) -> None:
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
            "modalities": ["ehr_codes", "text", "image", "genomics"],
            "tasks": {TASK: {"type": "binary", "horizon_days": cfg.horizon_days}},
            "missing": cfg.missing,
            "oracle": {TASK: oracle},
        },
    }
    (root / c.DATASET_METADATA).write_text(json.dumps(meta, indent=2))
