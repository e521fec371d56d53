"""``data.genomics``: which sources reach the model and how each is fitted (checked whole, at once)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

from medweave.data.readers import vcf
from medweave.errors import MedweaveError

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
