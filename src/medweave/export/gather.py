"""Gather a run's outputs (a run folder, or an MLflow run by its id), check each, write what
passes into the export folder with a manifest; everything else is listed with the reason.

Every file of the run is one of: an output this module knows (the evaluation report and its
figures, the config, the metrics, model checkpoints), run internals that are no output (logs,
Hydra's own files: skipped), or anything else, which leaves only if the content checks
(export/scan.py) find nothing. Predictions never leave by this path.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medweave.errors import MedweaveError
from medweave.export import disclosure, scan

log = logging.getLogger("medweave")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
CONFIG_FILES = ("config_resolved.yaml", ".hydra/config.yaml")
INTERNALS = {
    ".hydra": "Hydra's own files (the command line, this machine's paths); the config leaves as config.yaml",
    "mlflow_run_id": "which MLflow run this folder continues",
    "hparams.yaml": "a logger's copy of the config; the config leaves scrubbed as config.yaml",
    "metrics.csv": "a logger's per-step table; its final values leave, controlled, in metrics.json",
}
FIGURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".svg", ".pdf", ".gif"}
SCRUBBED = "<scrubbed>"
# Config keys whose values say where things are on this platform (or who may reach them).
_PLACE_KEY = re.compile(
    r"(root|dirs?|paths?|files?|uri|url|host|user(name)?|password|token|secret|cwd)$", re.I
)
# Absolute, home, relative ("./", "../") paths and URIs; "a/b.yaml" (a file), not "val/auroc" (a metric).
_PATH_VALUE = re.compile(r"^(?:[A-Za-z]:\\|[~/]|\.\.?/|[\w.+-]+://)|^[\w.~-]+/(?!/)[\w./-]*\.\w{1,8}$")


@dataclass
class Item:
    """One file of the run (or one the export made): exported, refused or skipped, and why."""

    path: str
    status: str  # exported | refused | skipped
    reason: str = ""
    checks: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # what a reviewer should know it holds
    optional: bool = False
    sha256: str = ""
    bytes: int = 0


@dataclass
class Export:
    out: Path
    items: list[Item]

    @property
    def refused(self) -> list[Item]:
        return [i for i in self.items if i.status == "refused"]

    @property
    def failed(self) -> bool:
        """Something the researcher would miss was held back (a model not asked for is not)."""
        return any(not i.optional for i in self.refused)


@dataclass
class Source:
    folder: Path
    label: str  # how the manifest names the run: the folder's name or the run id, never a path
    config: dict | None
    metrics: dict[str, float] | None
    config_file: str | None = None


# ---- the run -------------------------------------------------------------------------------------


def _read_config(folder: Path) -> tuple[dict | None, str | None]:
    """The run's resolved config (the one medweave logs; Hydra's copy otherwise) and its file."""
    import yaml

    for name in CONFIG_FILES:
        if (folder / name).is_file():
            return yaml.safe_load((folder / name).read_text()), name
    return None, None


def _mlflow_metrics(run_id: str, uri: str) -> dict[str, float] | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return dict(MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics)
    except MlflowException:
        return None


def _csv_metrics(folder: Path) -> dict[str, float] | None:
    """The last value of each metric in a CSV logger's metrics.csv files."""
    import pandas as pd

    out = {}
    for file in sorted(folder.rglob("metrics.csv")):
        frame = pd.read_csv(file)
        for column in frame.columns.drop(["epoch", "step"], errors="ignore"):
            values = frame[column].dropna()
            if len(values):
                out[column] = float(values.iloc[-1])
    return out or None


def _tracking_uri(given: str | None, config: dict | None) -> str | None:
    import os

    if given or os.environ.get("MLFLOW_TRACKING_URI"):
        return given or os.environ["MLFLOW_TRACKING_URI"]
    store = ((config or {}).get("paths") or {}).get("mlflow_dir")
    if store and (Path(store).expanduser() / "mlflow.db").is_file():
        return f"sqlite:///{(Path(store).expanduser() / 'mlflow.db').resolve()}"
    return None


def open_source(run: str, tracking_uri: str | None, mlflow_dir: str, scratch: Path) -> Source:
    """A run folder as it is, or an MLflow run's artifacts downloaded into ``scratch``."""
    folder = Path(run).expanduser()
    if folder.is_dir():
        config, config_file = _read_config(folder)
        metrics = None
        id_file = folder / "mlflow_run_id"
        uri = _tracking_uri(tracking_uri, config)
        if id_file.is_file() and uri:
            metrics = _mlflow_metrics(id_file.read_text().strip(), uri)
        metrics = metrics if metrics is not None else _csv_metrics(folder)
        return Source(folder, folder.name, config, metrics, config_file)
    if not _RUN_ID.match(run):
        raise MedweaveError(f"run='{run}': no such folder, and not a 32-character MLflow run id")
    import mlflow

    from medweave.tracking.mlflow import resolve_tracking_uri

    uri = _tracking_uri(tracking_uri, None) or resolve_tracking_uri(mlflow_dir)
    metrics = _mlflow_metrics(run, uri)
    if metrics is None:
        raise MedweaveError(f"run='{run}': no such run in the MLflow store {uri}")
    try:
        mlflow.artifacts.download_artifacts(run_id=run, dst_path=str(scratch), tracking_uri=uri)
    except Exception as err:  # MLflow raises many types for a missing artifact store
        raise MedweaveError(
            f"run='{run}': its artifacts could not be downloaded from {uri} ({err})"
        ) from None
    config, config_file = _read_config(scratch)
    return Source(scratch, run, config, metrics, config_file)


# ---- what leaves ---------------------------------------------------------------------------------


def scrub_config(value, key: str = ""):
    """The config with every value that says where something is on this platform (paths, URIs,
    hosts, user names) replaced by "<scrubbed>"; returns (config, how many were scrubbed)."""
    if isinstance(value, dict):
        out, count = {}, 0
        for k, v in value.items():
            out[k], n = scrub_config(v, str(k))
            count += n
        return out, count
    if isinstance(value, list):
        pairs = [scrub_config(v, key) for v in value]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    if isinstance(value, str) and (_PLACE_KEY.search(key) or _PATH_VALUE.search(value)) and value:
        return SCRUBBED, 1
    return value, 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Writer:
    """Writes into the export's temporary folder and keeps the manifest's list."""

    def __init__(self, folder: Path, cohort: scan.Cohort | None):
        self.folder, self.cohort, self.items = folder, cohort, []
        self.id_check = "subject IDs (the cohort's and by pattern)" if cohort else "subject IDs (by pattern)"

    def refuse(self, path: str, reason: str, optional: bool = False) -> None:
        self.items.append(Item(path, "refused", reason, optional=optional))

    def skip(self, path: str, reason: str) -> None:
        self.items.append(Item(path, "skipped", reason))

    def add(self, path: str, checks: list[str], changes: list[str] | None = None) -> bool:
        """Checks the file already written at ``path`` once more (dates, IDs: a controlled summary
        or a regenerated report must pass the same scan); keeps it or removes it."""
        file = self.folder / path
        problems = [] if file.suffix == ".ckpt" else scan.file_problems(file, self.cohort)
        if problems:
            file.unlink()
            self.refuse(path, "; ".join(problems))
            return False
        checks = [*checks] if file.suffix == ".ckpt" else [*checks, "no dates", self.id_check]
        item = Item(path, "exported", checks=checks, changes=changes or [])
        item.sha256, item.bytes = _sha256(file), file.stat().st_size
        self.items.append(item)
        return True

    def target(self, path: str) -> Path:
        file = self.folder / path
        file.parent.mkdir(parents=True, exist_ok=True)
        return file


def _report_title(page: Path) -> str:
    found = re.search(r"<title>(.*?)</title>", page.read_text()) if page.is_file() else None
    return html.unescape(found.group(1)) if found else "Evaluation"


def export_evaluation(folder: Path, rel: Path, writer: Writer, min_cell: int) -> tuple[dict, dict | None]:
    """evaluation.json controlled, its figures checked (some redrawn), report.html regenerated from
    the controlled summary. Returns (original, controlled) summaries; controlled None if refused."""
    from medweave.evaluation import report

    summary = json.loads((folder / "evaluation.json").read_text())
    controlled = disclosure.control_summary(summary, min_cell)
    names = [p.name for p in sorted(folder.iterdir()) if p.is_file()]
    if controlled.refused:
        for name in names:
            writer.refuse((rel / name).as_posix(), f"evaluation.json: {controlled.refused[0]}")
        return summary, None
    records, figures = summary.get("figures", {}), {}
    out = controlled.summary
    out["figures"] = {}
    for name in names:
        path = (rel / name).as_posix()
        if Path(name).suffix.lower() not in FIGURE_SUFFIXES:
            continue
        record, changes, refused = disclosure.control_figure(
            name, records.get(name), min_cell, folder / name, writer.target(path)
        )
        if refused:
            writer.target(path).unlink(missing_ok=True)
            writer.refuse(path, refused)
            continue
        checks = [f"drawn from cells of >= {min_cell} persons"]
        if writer.add(path, checks, changes):
            out["figures"][name] = record
            figures[record.get("caption", name)] = name
            controlled.changes += changes
    out["disclosure_control"] = {
        "min_cell": min_cell,
        "rules": "docs/output-control.md (medweave)",
        "changes": controlled.changes,
    }
    title = _report_title(folder / "report.html")
    report.write_report(writer.folder / rel, out, figures, title=title)
    checks = [f"counts and subgroup figures from >= {min_cell} persons", "no subject-level rows"]
    for name in ("evaluation.json", "report.html"):
        changes = (
            controlled.changes if name == "evaluation.json" else ["regenerated from the controlled summary"]
        )
        writer.add((rel / name).as_posix(), checks, changes)
    for name in names:
        known = name in ("evaluation.json", "report.html") or Path(name).suffix.lower() in FIGURE_SUFFIXES
        if not known:
            _export_other(folder / name, (rel / name).as_posix(), writer)
    return summary, out


def control_metrics(
    metrics: dict[str, float], evaluations: list[tuple[dict, dict | None]], min_cell: int
) -> dict:
    """The run's final metrics with every figure of an evaluation replaced by its controlled
    value (suppressed ones left out), every metric of a split whose evaluation was refused left
    out, and no count of fewer than ``min_cell``."""
    from medweave.evaluation.summary import flat_metrics

    out = dict(metrics)
    allowed = set()
    for original, controlled in evaluations:
        for prefix in ("test", "val"):
            before = flat_metrics(original, prefix)
            if not any(k in out and out[k] == v for k, v in before.items()):
                continue  # another split's evaluation
            if controlled is None:
                out = {k: v for k, v in out.items() if not k.startswith(f"{prefix}/")}
                continue
            for k in before:
                out.pop(k, None)
            after = flat_metrics(controlled, prefix)
            out.update(after)
            allowed |= set(after)
    counts = re.compile(r"(^|/)(n|events)$")
    return {
        k: v
        for k, v in sorted(out.items())
        if ("/by_" not in k or k in allowed) and not (counts.search(k) and k not in allowed and v < min_cell)
    }


def export_model(file: Path, rel: str, writer: Writer, include: bool, min_cell: int) -> None:
    """A checkpoint leaves only when asked for, as weights plus what evaluation needs (scrubbed
    config, vocabularies), without optimiser state, as model/<name>; its fitted statistics are
    listed. Refusals name the run's own path ``rel``."""
    path = f"model/{file.name}"
    if not include:
        writer.refuse(rel, "model weights are exported only with export.include_model=true", optional=True)
        return
    import torch

    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a bad file
        writer.refuse(rel, f"not a readable checkpoint ({type(err).__name__})")
        return
    if not isinstance(ckpt, dict) or "medweave" not in ckpt or "state_dict" not in ckpt:
        writer.refuse(rel, "not a medweave checkpoint: what it holds cannot be checked")
        return
    extras = ckpt["medweave"]
    data = (extras.get("config") or {}).get("data") or {}
    least = data.get("vocab_min_subjects", _default(data.get("_target_"), "vocab_min_subjects"))
    if not isinstance(least, int) or least < min_cell:
        writer.refuse(
            rel,
            f"its vocabularies (codes, note words, value statistics) may hold entries of fewer than "
            f"{min_cell} train subjects (data.vocab_min_subjects={least}); retrain with "
            f"data.vocab_min_subjects>={min_cell}",
        )
        return
    config, _ = scrub_config(extras.get("config") or {})
    vocab = dict(extras.get("vocab") or {})  # codes and words as they are: the model needs them
    if isinstance(vocab.get("tokenizer"), dict) and "path" in vocab["tokenizer"]:
        vocab["tokenizer"] = {**vocab["tokenizer"], "path": SCRUBBED}  # a pretrained tokenizer's folder
    problems = scan.text_problems(json.dumps(vocab, default=str), writer.cohort)
    problems += scan.text_problems(json.dumps(config, default=str), writer.cohort)
    problems += [p for p in scan.json_problems(vocab, writer.cohort) if "names a subject" in p]
    if problems:
        writer.refuse(rel, "its vocabularies or config hold " + "; ".join(problems))
        return
    stripped = {
        "state_dict": ckpt["state_dict"],
        "medweave": {**extras, "config": config, "vocab": vocab},
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
    }
    torch.save(stripped, writer.target(path))
    writer.add(
        path,
        [
            "weights, scrubbed config and vocabularies only (no optimiser state)",
            f"vocabulary entries and value statistics each from >= {least} train subjects",
            "no dates or subject IDs in its config and vocabularies",
        ],
    )
    writer.items[-1].flags = model_flags(vocab, least)


def model_flags(vocab: dict, least: int) -> list[str]:
    """What a checkpoint learnt from the training split beyond its weights, for the reviewer."""
    flags = []
    if "codes" in vocab:
        flags.append(f"{len(vocab['codes'])} codes, each seen in >= {least} train subjects")
    if "code_stats" in vocab:
        flags.append(f"mean and SD of the values of {len(vocab['code_stats'])} codes over the train subjects")
    if isinstance(vocab.get("tokenizer"), dict) and "json" in vocab["tokenizer"]:
        flags.append(f"a word tokenizer fitted on train notes (words of >= {least} subjects)")
    if "variant_mean" in vocab:
        flags.append(
            f"per-variant dosage mean and SD over the train split ({len(vocab['variant_mean'])} variants): "
            "a rare variant's mean gives its carrier count, which can be below min_cell"
        )
    if "target_mean" in vocab:
        flags.append("mean and SD of the regression target over the train split")
    if "classes" in vocab:
        flags.append(f"the {len(vocab['classes'])} class names seen in train")
    return flags


def _default(target: str | None, argument: str):
    """The constructor default of ``argument`` of the class a config's _target_ names (what a run
    that did not set it used), or None."""
    import inspect

    from hydra.utils import get_class

    try:
        parameter = inspect.signature(get_class(target)).parameters.get(argument)
    except Exception:  # no target, or a class this installation lacks
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def _export_other(file: Path, path: str, writer: Writer) -> None:
    """A file medweave-export knows nothing about: it leaves only if the content checks pass."""
    if file.suffix.lower() in FIGURE_SUFFIXES:
        writer.refuse(path, "a figure without a record of its counts: its cells cannot be checked")
        return
    problems = scan.file_problems(file, writer.cohort)
    if problems:
        writer.refuse(path, "; ".join(problems))
        return
    target = writer.target(path)
    target.write_bytes(file.read_bytes())
    writer.add(path, ["no subject-level rows"])


def _internal(rel: Path) -> str | None:
    if rel.parts[0] == ".hydra" and rel.as_posix() != ".hydra/config.yaml":
        return INTERNALS[".hydra"]
    if rel.suffix == ".log":
        return "a run log (paths, library messages): not an output"
    return INTERNALS.get(rel.name)


def gather(source: Source, writer: Writer, include_model: bool, min_cell: int) -> None:
    files = sorted(p for p in source.folder.rglob("*") if p.is_file())
    evaluations, config_done = [], False
    evaluation_dirs = {p.parent for p in files if p.name == "evaluation.json"}
    for folder in sorted(evaluation_dirs):
        evaluations.append(export_evaluation(folder, folder.relative_to(source.folder), writer, min_cell))
    for file in files:
        rel = file.relative_to(source.folder)
        path = rel.as_posix()
        if file.parent in evaluation_dirs:
            continue
        if file.name.lower().startswith("predictions"):
            writer.refuse(path, "predictions are one row per subject: they never leave by this path")
        elif file.suffix == ".ckpt":
            export_model(file, path, writer, include_model, min_cell)
        elif path in CONFIG_FILES:
            if config_done:
                writer.skip(path, "the same config as config.yaml")
                continue
            config_done = True
            import yaml

            scrubbed, count = scrub_config(source.config or {})
            writer.target("config.yaml").write_text(yaml.safe_dump(scrubbed, sort_keys=False))
            checks = [f"{count} paths, URIs and user names scrubbed"]
            writer.add("config.yaml", checks, [f"from {source.config_file}"])
        elif reason := _internal(rel):
            writer.skip(path, reason)
        else:
            _export_other(file, path, writer)
    if source.metrics:
        metrics = control_metrics(source.metrics, evaluations, min_cell)
        writer.target("metrics.json").write_text(json.dumps(metrics, indent=2))
        writer.add(
            "metrics.json", [f"no count below {min_cell}", "subgroup figures as in the controlled report"]
        )


def export_run(
    run: str,
    out: Path,
    min_cell: int = 5,
    include_model: bool = False,
    tracking_uri: str | None = None,
    mlflow_dir: str = "logs/mlflow",
) -> Export:
    """Check and copy what may leave the platform from ``run`` into ``out`` (replaced whole: a
    failure leaves the old folder or none, never half an export)."""
    from medweave import __version__
    from medweave.folders import replace_folder

    if min_cell < 2:
        raise MedweaveError(f"export.min_cell={min_cell}: expected at least 2 persons per cell")
    out = Path(out).expanduser()
    if Path(run).expanduser().is_dir() and out.resolve().is_relative_to(Path(run).expanduser().resolve()):
        raise MedweaveError(f"out='{out}' is inside the run folder; choose a folder outside it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise MedweaveError(
            f"out='{out}' exists and is not an earlier export (no manifest.json); choose a new folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            source = open_source(run, tracking_uri, mlflow_dir, Path(scratch))
            root = ((source.config or {}).get("data") or {}).get("root")
            cohort = scan.Cohort.read(root)
            writer = Writer(staging, cohort)
            gather(source, writer, include_model, min_cell)
        manifest = {
            "run": source.label,
            "medweave": __version__,
            "min_cell": min_cell,
            "include_model": include_model,
            "subject_ids_checked_against_cohort": cohort is not None,
            "rules": "docs/output-control.md",
            "exported": [_entry(i) for i in writer.items if i.status == "exported"],
            "refused": [_entry(i) for i in writer.items if i.status == "refused"],
            "skipped": [_entry(i) for i in writer.items if i.status == "skipped"],
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        replace_folder(staging, out)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Export(out, writer.items)


def _entry(item: Item) -> dict:
    keep = {
        "exported": ("path", "sha256", "bytes", "checks", "changes", "flags"),
        "refused": ("path", "reason", "optional"),
    }
    return {k: v for k, v in asdict(item).items() if k in keep.get(item.status, ("path", "reason"))}
