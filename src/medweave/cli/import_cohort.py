"""medweave-import: turn FHIR R4 or registry tables into a medweave cohort (MEDS events + metadata).

    medweave-import format=fhir input=synthea/output/fhir out=data/synthea
    medweave-import format=fhir input=bulk_export/ out=data/bulk        # $export manifest + NDJSON
    medweave-import format=table input=extract/ mapping=registry_extract out=data/registry

The source's person IDs become int64 subject_ids; their map is written beside the cohort
(<out>.subject_map.parquet), never inside it. What was skipped and why is printed at the end
and kept in metadata/dataset.json under "medweave": {"import": ...}. Then:
    medweave-validate data.root=<out>
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("medweave")


def resolve_mapping(mapping) -> Path:
    """A mapping file, or the name of one shipped in configs/import/ (lpr_diagnoses)."""
    from medweave.cli.hydra_main import config_dir
    from medweave.errors import MedweaveError

    path = Path(str(mapping)).expanduser()
    if path.is_file():
        return path
    shipped = config_dir() / "import" / f"{path.stem}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in (config_dir() / "import").glob("*.yaml"))
    raise MedweaveError(f"mapping={mapping}: no such file, nor a shipped mapping; shipped: {names}")


def import_cohort(cfg) -> str:
    from omegaconf import OmegaConf

    from medweave.errors import MedweaveError
    from medweave.importers.cohort_writer import ImportOptions

    settings = OmegaConf.to_container(cfg, resolve=True)
    options = ImportOptions(
        **{
            k: settings[k]
            for k in ImportOptions.__dataclass_fields__
            if k in settings and k != "split_fractions"
        },
        split_fractions=dict(settings["split_fractions"]),
    )
    inputs = settings["input"]
    if settings["format"] == "fhir":
        from medweave.importers.fhir import FhirMapping, import_fhir

        root = import_fhir(inputs, settings["out"], options, FhirMapping(**settings.get("fhir", {})))
    elif settings["format"] == "table":
        from medweave.importers.table import import_table

        if not settings.get("mapping"):
            raise MedweaveError("format=table needs mapping=<yaml> (see configs/import/ for examples)")
        root = import_table(inputs, resolve_mapping(settings["mapping"]), settings["out"], options)
    else:
        raise MedweaveError(f"format={settings['format']!r}: expected 'fhir' or 'table'")
    summary = json.loads((root / "metadata" / "dataset.json").read_text())["medweave"]["import"]
    # the per-reason counts were logged by the importer (and are in metadata/dataset.json)
    print(f"Imported {summary['subjects']} subjects, {summary['events']} events into {root}")
    return str(root)


def main() -> None:
    from medweave.cli.hydra_main import run

    run(import_cohort, "import", "medweave-import")


if __name__ == "__main__":
    main()
