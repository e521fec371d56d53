"""The cohort contract: where each file of a cohort sits, its columns, and what may be null.

EHR events follow MEDS (Medical Event Data Standard); medweave adds labels/, imaging/ and
genomics/ beside them. A sandbox cohort, an imported registry extract and a real MEDS export all
look like this, so experiments move between them by changing only ``data.root``.

    <root>/metadata/dataset.json             optional: MEDS dataset metadata (+ "medweave" section)
    <root>/metadata/codes.parquet            optional: code, description, parent_codes
    <root>/metadata/subject_splits.parquet   subject_id, split (custom splits: subjects not used)
    <root>/data/**/*.parquet                 MEDS events, sharded in any sub-folders; numeric_value,
                                             text_value and extra columns optional
    <root>/labels/<task>.parquet             subject_id, prediction_time, boolean_value, ...
                                             (survival: float_value = days to event or
                                             censoring, boolean_value = event seen); or a folder
                                             labels/<task>/*.parquet of shards; data.labels_dir
                                             moves labels/ (readers/meds.py says how far it bends)
    <root>/imaging/index.parquet             subject_id, time, path, modality, view; path is a
                                             DICOM file (2D or multi-frame), a DICOM series folder
                                             or a NIfTI file; modality one of IMAGING_MODALITIES
    <root>/genomics/variants.vcf.gz (+.tbi)  multi-sample VCF (or variants.bcf), sample name = subject_id
    <root>/genomics/variants/*.vcf.gz|*.bcf  or per-chromosome files, merged by sample
    <root>/genomics/variants.pgen|.bed|.bgen PLINK 2 (+.pvar/.psam), PLINK 1 (+.bim/.fam), BGEN (+.sample)
    <root>/genomics/variants/chr<N>.pgen|... or one such set per chromosome (none may be missing)
    <root>/genomics/pgs/*.txt[.gz]           optional: PGS Catalog scoring files (the pgs source)
    <root>/genomics/sample_map.tsv|.parquet  optional: sample, subject_id (VCF sample -> subject)
    <root>/genomics/expression.parquet       optional: subject_id + one column per gene, or
                                             gene + one column per subject (or sample)
    <root>/genomics/embeddings.parquet       optional: subject_id + embedding list<float32>;
                                             provenance (model, version, source) in the schema
                                             metadata or genomics/embeddings.json
"""

from __future__ import annotations

import difflib
from pathlib import Path

import meds
import pyarrow as pa

from medweave.errors import MedweaveError

# Splits (MEDS names) and the Lightning stage each one feeds.
TRAIN_SPLIT = meds.train_split
TUNING_SPLIT = meds.tuning_split
HELD_OUT_SPLIT = meds.held_out_split
SPLITS = (TRAIN_SPLIT, TUNING_SPLIT, HELD_OUT_SPLIT)
STAGE_OF_SPLIT = {TRAIN_SPLIT: "train", TUNING_SPLIT: "val", HELD_OUT_SPLIT: "test"}

# Modalities medweave knows; a batch carries "<name>" and "<name>_mask" for each selected one.
EHR_CODES = "ehr_codes"
TEXT = "text"
IMAGE = "image"  # 2D: each subject's latest radiograph-like image, float16 [N, 1, H, W] in the cache
GENOMICS = "genomics"
VOLUME = "volume"  # 3D: each subject's latest CT/MR volume, float16 [N, 1, D, H, W] in the cache
MODALITIES = (EHR_CODES, TEXT, IMAGE, GENOMICS, VOLUME)

# Clinical notes are MEDS events whose code starts with this prefix; the note is text_value.
NOTE_PREFIX = "NOTE//"
BIRTH_CODE = meds.birth_code

DATASET_METADATA = meds.dataset_metadata_filepath
CODES_METADATA = meds.code_metadata_filepath
SUBJECT_SPLITS = meds.subject_splits_filepath
EVENTS_DIR = meds.data_subdirectory
LABELS_DIR = "labels"
IMAGING_INDEX = "imaging/index.parquet"
IMAGING_DIR = "imaging"
VARIANTS_VCF = "genomics/variants.vcf.gz"
VARIANTS_BCF = "genomics/variants.bcf"
VARIANTS_DIR = "genomics/variants"  # per-chromosome *.vcf.gz / *.bcf / *.pgen / *.bed / *.bgen
VARIANTS_STEM = "genomics/variants"  # + .pgen/.pvar/.psam (PLINK 2), .bed/.bim/.fam (PLINK 1), .bgen
PGS_DIR = "genomics/pgs"  # PGS Catalog scoring files (*.txt, *.txt.gz) for data.genomics pgs
SAMPLE_MAPS = ("genomics/sample_map.tsv", "genomics/sample_map.parquet")  # sample, subject_id
EMBEDDINGS = "genomics/embeddings.parquet"  # subject_id + embedding; provenance in metadata/.json
EXPRESSION = "genomics/expression.parquet"  # optional: subject_id + one float column per gene
GROUND_TRUTH = "ground_truth/risk.parquet"  # sandbox only: never a model input

# MEDS' own schemas, so that what the sandbox writes is what any MEDS tool reads.
EVENTS_SCHEMA = meds.DataSchema.schema()
LABEL_SCHEMA = meds.LabelSchema.schema()
CODES_SCHEMA = pa.schema(
    [
        pa.field("code", pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("parent_codes", pa.list_(pa.string())),
    ]
)
SPLITS_SCHEMA = pa.schema(
    [pa.field("subject_id", pa.int64(), nullable=False), pa.field("split", pa.string(), nullable=False)]
)
IMAGING_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("time", pa.timestamp("us"), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # relative to imaging/
        pa.field("modality", pa.string()),  # DICOM Modality: CR, DX, CT, MR
        pa.field("view", pa.string()),
    ]
)
# Index modality values (DICOM Modality) medweave reads; a row with another value is a fault.
# The image modality reads rows that name one file (DICOM, not NIfTI) with a null modality or any
# of these; the volume modality reads CT/MR rows that name a series folder, a NIfTI file or a
# multi-frame DICOM file (data/imaging/).
RADIOGRAPH_MODALITIES = ("CR", "DX")
VOLUME_MODALITIES = ("CT", "MR")
IMAGING_MODALITIES = RADIOGRAPH_MODALITIES + VOLUME_MODALITIES

# Task types and the MEDS label columns each reads (non-null in every row).
LABEL_VALUES = {
    "binary": ("boolean_value",),
    "survival": ("boolean_value", "float_value"),  # event seen; days to event or censoring
    "multiclass": ("categorical_value",),
    "multilabel": ("boolean_value",),  # one label file per label
    "regression": ("float_value",),
}

# Columns a reader needs in each file (extra columns are allowed, as MEDS allows them).
REQUIRED_COLUMNS = {
    "events": ("subject_id", "time", "code"),  # numeric_value, text_value: optional in MEDS
    "splits": ("subject_id", "split"),
    "labels": ("subject_id", "prediction_time"),
    "imaging": ("subject_id", "time", "path"),
}


def did_you_mean(name: str, choices) -> str:
    """ " Did you mean 'x'?" for one plausible choice, " Did you mean one of 'x', 'y'?" for several,
    "" for none. Names that extend ``name`` (``death`` -> ``death_5y``, ``death_surv``) come first
    and all of them are listed: none is the obvious one. Else the close spellings (``tsak``)."""
    choices = sorted(map(str, choices))
    near = [x for x in choices if x != name and x.startswith(name)] or difflib.get_close_matches(
        name, choices, n=3, cutoff=0.6
    )
    if not near:
        return ""
    if len(near) == 1:
        return f" Did you mean '{near[0]}'?"
    return " Did you mean one of " + ", ".join(f"'{x}'" for x in near) + "?"


def check_modalities(modalities) -> list[str]:
    """Return the modality list, or raise naming the unknown one and the nearest valid name."""
    names = list(modalities)
    if not names:
        raise MedweaveError(f"data.modalities is empty; choose from {list(MODALITIES)}")
    for name in names:
        if name not in MODALITIES:
            near = [m for m in MODALITIES if m.startswith(str(name))] or difflib.get_close_matches(
                str(name), MODALITIES, n=1, cutoff=0.5
            )
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise MedweaveError(
                f"unknown modality '{name}' in data.modalities; valid: {list(MODALITIES)}.{hint}"
            )
    if len(set(names)) != len(names):
        raise MedweaveError(f"data.modalities lists a modality twice: {names}")
    return names


def require_root(root: str | Path) -> Path:
    """The cohort folder, or an error saying that data.root does not point at one."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MedweaveError(
            f"data.root '{root}' does not exist or is not a folder; expected a cohort folder "
            f"with {DATASET_METADATA}, {SUBJECT_SPLITS} and {EVENTS_DIR}/*.parquet "
            "(make one with: medweave-sandbox out=<dir>)"
        )
    return path.resolve()


def missing_modality_files(root: Path, modalities) -> dict[str, str]:
    """Each asked-for modality whose folder or index the cohort lacks, with what is missing: by
    path alone, so a launch fails in a second instead of after preparing the other modalities."""
    needs = {IMAGE: IMAGING_INDEX, VOLUME: IMAGING_INDEX, GENOMICS: "genomics/"}
    return {m: needs[m] for m in modalities if m in needs and not (root / needs[m]).exists()}


def require_file(root: Path, relative: str, why: str) -> Path:
    path = root / relative
    if not path.exists():
        raise MedweaveError(f"cohort '{root}' has no {relative} (needed for {why})")
    return path


def require_columns(table: pa.Table | pa.Schema, required, path: Path) -> None:
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    missing = [c for c in required if c not in names]
    if missing:
        raise MedweaveError(
            f"{path}: missing column(s) {missing}; expected at least {list(required)}, found {names}"
        )


def label_path(root: Path, task: str) -> Path:
    return root / LABELS_DIR / f"{task}.parquet"
