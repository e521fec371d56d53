"""Finding and reading FHIR files: Bundles, single resources, NDJSON and Bulk Data exports.

Inputs are files or folders (searched recursively) of ``*.json`` (a Bundle, one resource or an
array of resources),
``*.ndjson`` (one resource, or one Bundle, per line) and gzipped versions of either.

A FHIR Bulk Data ``$export`` manifest (a JSON object with ``transactionTime`` and an ``output``
list, whatever its file name) is followed: each ``output[].url`` is read as NDJSON, whether it is
relative to the manifest's folder (``Patient.ndjson``, ``out/1.ndjson``), a ``file://`` URL or an
absolute path; ``http(s)://`` URLs are refused (download the export first). Files the manifest
lists under ``error`` (OperationOutcomes) and ``deleted`` are counted, not read. Files beside a
manifest are read too, each once.

Other JSON that is not a resource (a generator's metadata, an npm ``package.json``) is skipped
and counted in the summary's ``skipped_files``; a file that is not JSON at all is bad input.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from medweave.errors import MedweaveError

SUFFIXES = (".json", ".ndjson", ".json.gz", ".ndjson.gz")
MANIFEST_PEEK = 4 << 20  # a JSON file up to 4 MiB is checked for being a manifest before pass 1


@dataclass
class Inputs:
    """What to read: resource files (path -> NDJSON or not) and the manifests that named some."""

    files: dict[Path, bool] = field(default_factory=dict)  # path -> read as NDJSON
    manifests: list[dict] = field(default_factory=list)  # summary rows (no URLs, no request)
    not_read: Counter = field(default_factory=Counter)  # manifest outputs left out, by reason

    def add(self, path: Path, ndjson: bool) -> None:
        self.files.setdefault(path.resolve(), ndjson)

    def sorted(self) -> list[tuple[Path, bool]]:
        return sorted(self.files.items())


def fhir_inputs(inputs, fault=None) -> Inputs:
    """Every FHIR file named by ``inputs`` (files, folders, manifests), each once, sorted.

    ``fault(kind, path, where, expected)`` hears of a manifest output that is missing (strict:
    raises; lenient: the file is left out); without it, that raises."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    found = Inputs()
    candidates: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            candidates += sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        elif path.is_file():
            candidates.append(path)
        else:
            raise MedweaveError(f"input {path} does not exist; expected FHIR JSON/NDJSON files or a folder")
    manifests = {p.resolve() for p in candidates if _is_manifest_file(p)}
    for path in sorted(manifests):
        _follow(path, found, fault or _raise)
    for path in candidates:
        if path.resolve() not in manifests:
            found.add(path, _is_ndjson(path))
    if not found.files:
        raise MedweaveError(f"input {inputs}: no FHIR files found; expected files ending in {list(SUFFIXES)}")
    return found


def is_manifest(obj) -> bool:
    return (
        isinstance(obj, dict)
        and "resourceType" not in obj
        and isinstance(obj.get("output"), list)
        and ("transactionTime" in obj or "request" in obj)
    )


def _is_ndjson(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(".ndjson")


def _is_manifest_file(path: Path) -> bool:
    if _is_ndjson(path) or path.stat().st_size > MANIFEST_PEEK:
        return False
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            return is_manifest(json.load(f))
    except (ValueError, UnicodeDecodeError, OSError, EOFError):
        return False  # not JSON: pass 1 reports it


def _raise(kind, path, where, expected) -> None:
    raise MedweaveError(f"{path}: {where}: {expected}")


def _follow(path: Path, found: Inputs, fault) -> None:
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
        manifest = json.loads(f.read())
    listed = 0
    for i, entry in enumerate(manifest["output"]):
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url:
            raise MedweaveError(f"{path}: output[{i}].url: expected the URL or path of an NDJSON file")
        target = _local(path, url, f"output[{i}].url")
        if not target.is_file():
            fault(
                "manifest output",
                path,
                f"output[{i}].url",
                f"names {target.name}, which does not exist; expected the export's NDJSON files "
                "beside the manifest (or file:// URLs to them)",
            )
            continue
        found.add(target, True)
        listed += 1
    for key in ("error", "deleted"):
        entries = manifest.get(key) or []
        if entries:
            found.not_read[f"manifest {key} files (not resources to import)"] += len(entries)
    found.manifests.append({"transactionTime": str(manifest.get("transactionTime")), "outputs": listed})


def _local(manifest: Path, url: str, where: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        raise MedweaveError(
            f"{manifest}: {where}: a remote URL ({parsed.scheme}://{parsed.netloc}/...); medweave reads "
            "local exports only: download the files, then point input at the folder"
        )
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise MedweaveError(
            f"{manifest}: {where}: URL scheme {parsed.scheme}: expected a file path or file://"
        )
    target = Path(url).expanduser()
    return target if target.is_absolute() else manifest.parent / target


class Reader:
    """Yields (where, resource JSON, fullUrl) from a file; reports faults once (pass 1).

    Args:
        fault: called as ``fault(kind, path, where, expected)`` for bad input.
    """

    def __init__(self, fault):
        self.fault = fault
        self.skipped_files: Counter[str] = Counter()  # reason -> files that are not resources

    def read(self, path: Path, ndjson: bool, report: bool) -> Iterator[tuple[str, dict, str | None]]:
        opener = gzip.open if path.name.endswith(".gz") else open
        if ndjson:
            with opener(path, "rt", encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        if report:
                            self.fault(
                                "NDJSON line",
                                path,
                                f"line {i}",
                                "expected one JSON resource per line (NDJSON)",
                            )
                        continue
                    yield from self._expand(path, obj, f"line {i}", None, report)
            return
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                obj = json.load(f)
        except (ValueError, UnicodeDecodeError, OSError, EOFError):
            if report:
                self.fault("file", path, "file", "expected a FHIR Bundle or resource as JSON")
            return
        if isinstance(obj, list) and obj and all(isinstance(o, dict) and "resourceType" in o for o in obj):
            for i, item in enumerate(obj):  # a JSON array of resources, as some tools dump them
                yield from self._expand(path, item, f"item {i}", None, report)
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
            if report:  # valid JSON, just not FHIR: metadata beside the export
                self.skipped_files["JSON that is not a FHIR resource (no resourceType)"] += 1
            return
        yield from self._expand(path, obj, "resource", None, report)

    def _expand(self, path, obj, where, full_url, report):
        if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
            if report:
                self.fault("unknown", path, where, "expected a JSON object with a resourceType")
            return
        if obj["resourceType"] != "Bundle":
            yield where, obj, full_url
            return
        base = "" if where == "resource" else f"{where}, "
        for j, entry in enumerate(obj.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is None:
                if report:
                    self.fault("Bundle entry", path, f"{base}entry {j}", "expected entry.resource")
                continue
            yield from self._expand(path, resource, f"{base}entry {j}", entry.get("fullUrl"), report)
