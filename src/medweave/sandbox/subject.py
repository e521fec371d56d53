"""Draw one synthetic person, everything about them, from their own random stream.

The stream is ``SeedSequence(seed, spawn_key=(i,))``, the i-th child of the cohort's seed: a
person's data depend only on the seed and their index, never on who else is in their shard.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.sandbox import ehr, genomics, imaging, notes, outcomes, volumes
from medweave.sandbox.latent import draw_person, factors, sigmoid

OPTIONAL_MODALITIES = (c.TEXT, c.IMAGE, c.GENOMICS)


@dataclass
class Subject:
    prediction_time: np.datetime64
    events: list[tuple]  # (time, code, numeric_value, text_value)
    truth: dict[str, float]
    outcomes: dict[str, tuple[bool, float, bool]]  # disease -> (onset in horizon, days, event seen)
    image_rows: list[tuple] = field(default_factory=list)  # (time, path, modality, view)
    extra_labels: dict = field(default_factory=dict)  # "hba1c": mean HbA1c over the horizon, "first"
    genotype: np.ndarray | None = None  # uint8 [V]: hap0 + 2 * hap1
    expression: np.ndarray | None = None  # float32 [G]


def has_modalities(cfg, health: float, rng: np.random.Generator) -> dict[str, bool]:
    """Who has notes, images and genomes: at random when ``missing_health_effect`` is 0, else
    with log-odds of having each shifted by that much per SD of ill health (m + s + l) / sqrt(3)."""
    has = {}
    for name in OPTIONAL_MODALITIES:
        keep = 1.0 - cfg.missing.get(name, 0.0)
        if cfg.missing_health_effect and 0 < keep < 1:
            keep = float(sigmoid(np.log(keep / (1 - keep)) + cfg.missing_health_effect * health))
        has[name] = bool(rng.random() < keep)
    return has


def draw_subject(i: int, subject_id: int, cfg, panel, expression_model, root: Path) -> Subject:
    """Everything about person i; writes their image files under ``root``."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(i,)))
    person = draw_person(rng)
    haplotypes = genomics.draw_genotype(panel, rng)
    genetic = genomics.polygenic_scores(panel, haplotypes)
    x = factors(person, genetic)
    follow_up = outcomes.censoring_days(
        person.prediction_time, np.datetime64(cfg.follow_up_end, "s"), cfg.loss_per_year, rng
    )
    administrative = float((np.datetime64(cfg.follow_up_end, "s") - person.prediction_time) / outcomes.DAY)
    truth = {f"genetic_{k}": v for k, v in genetic.items()}
    truth |= {"metabolic": person.metabolic, "symptoms": person.symptoms, "structural": person.structural}
    truth |= {"age_years": person.age, "male": x["male"]}
    result, onsets = {}, []
    for name, disease in cfg.diseases.items():
        risk = float(sigmoid(disease.liability(x)))
        days = outcomes.event_days(risk, rng.random(), cfg.horizon_days)
        truth[f"risk_{name}"], truth[f"event_days_{name}"] = risk, days
        seen = days <= follow_up
        result[name] = (days <= cfg.horizon_days, min(days, follow_up), seen)
        if seen:
            onsets.append((person.prediction_time + np.timedelta64(int(days * 86400), "s"), disease.code))
    health = (person.metabolic + person.symptoms + person.structural) / np.sqrt(3)
    has = has_modalities(cfg, health, rng)
    truth |= {f"has_{name}": has[name] for name in OPTIONAL_MODALITIES}

    visits = ehr.visit_times(person, rng, follow_up_days=cfg.horizon_days)
    events = ehr.draw_events(person, visits, onsets, rng)
    events.append((person.prediction_time, ehr.INDEX, None, None))
    if follow_up < administrative:  # lost before the data cutoff: the registry records when
        events.append(
            (person.prediction_time + np.timedelta64(int(follow_up * 86400), "s"), ehr.LOST, None, None)
        )
    if has[c.TEXT]:
        any_onset = any(onset for onset, _, _ in result.values())
        events += notes.draw_note_events(person, visits, any_onset, rng)
    subject = Subject(person.prediction_time, events, truth, result)
    subject.extra_labels = _extra_labels(person.prediction_time, events, truth, result, cfg.horizon_days)

    if has[c.IMAGE]:
        study = person.prediction_time - np.timedelta64(int(rng.integers(1, 300)), "D")
        name = uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i).hex
        imaging.write_dicom(
            root / c.IMAGING_DIR / f"cr/{name}.dcm",
            imaging.draw_radiograph(person.structural, cfg.image_size, rng),
            subject_id,
            study,
            uid_seed=cfg.seed * 10**7 + i,
        )
        subject.image_rows.append((study, f"cr/{name}.dcm", "CR", "PA"))
        if cfg.volumes:
            hu = volumes.draw_volume(person.structural, tuple(cfg.volume_shape), rng)
            ct_time = study + np.timedelta64(1, "D")
            volumes.write_nifti(root / c.IMAGING_DIR / f"ct_nifti/{name}.nii.gz", hu)
            volumes.write_dicom_series(
                root / c.IMAGING_DIR / f"ct/{name}", hu, subject_id, ct_time, cfg.seed * 10**7 + i, rng
            )
            subject.image_rows += [(ct_time, f"ct/{name}", "CT", "AXIAL")]
            subject.image_rows += [(ct_time, f"ct_nifti/{name}.nii.gz", "CT", "AXIAL")]
    if has[c.GENOMICS]:
        subject.genotype = (haplotypes[0] + 2 * haplotypes[1]).astype(np.uint8)
        if expression_model is not None:
            subject.expression = genomics.draw_expression(expression_model, haplotypes, person.metabolic, rng)
    return subject


def _extra_labels(prediction_time, events, truth, result, horizon_days) -> dict:
    """Labels for the other task types: the mean HbA1c measured over the horizon (regression; None
    without a measurement) and which disease came first within it (multiclass; "none")."""
    end = prediction_time + np.timedelta64(horizon_days, "D")
    values = [
        v for t, code, v, _ in events if code == ehr.HBA1C and t is not None and prediction_time < t <= end
    ]
    first = [(truth[f"event_days_{name}"], name) for name, (onset, _, _) in result.items() if onset]
    return {"hba1c": float(np.mean(values)) if values else None, "first": min(first)[1] if first else "none"}
