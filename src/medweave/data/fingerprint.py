"""The cohort's fingerprint: what names a cohort's content in cache keys and provenance.

Hashing every byte of a national cohort (tens of GB of events, images and genotypes) on every
launch and every DDP rank costs minutes before the first step. So by default (``quick``) the
fingerprint hashes what the file system says of each file, as rsync's quick check does: its path
relative to the cohort, its size and its modification time (ns), stat calls only, no reads. Any
write changes it; a copy made without keeping times (``cp -r``, not ``cp -a``/``rsync -a``) gets a
new one, so it is prepared again: a cost, never a stale cache. ``full`` hashes every byte
(``data.fingerprint=full``): an identity of the content that survives copies, for provenance
across machines. It is computed once per state of the files (keyed by the quick fingerprint, by
one process under a lock, kept under ``<cache_dir>/fingerprints/``) and reused by every rank and
later launch while no file changes.
Hidden files and ``ground_truth/`` (the sandbox's answers, never an input) are left out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from filelock import FileLock

from medweave.errors import MedweaveError
from medweave.folders import content_hash

MODES = ("quick", "full")
SKIP = ("ground_truth/",)


def _files(root: Path) -> list[tuple[str, Path]]:
    out = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if not rel.startswith(SKIP) and not any(part.startswith(".") for part in Path(rel).parts):
            out.append((rel, file))
    return out


def quick_fingerprint(root: Path) -> str:
    """Paths, sizes and modification times of every file: stat calls only."""
    digest = hashlib.blake2b(digest_size=16)
    for rel, file in _files(Path(root)):
        stat = file.stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cohort_fingerprint(root: Path, mode: str = "quick", cache_dir: Path | None = None) -> str:
    """The fingerprint of the cohort folder ``root`` (module docstring)."""
    if mode not in MODES:
        raise MedweaveError(f"data.fingerprint={mode}: expected one of {list(MODES)}")
    quick = quick_fingerprint(Path(root))
    if mode == "quick":
        return quick
    if cache_dir is None:
        return content_hash(Path(root), skip=SKIP)
    kept = Path(cache_dir).expanduser().resolve() / "fingerprints" / f"{quick}.full"
    kept.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(kept.with_suffix(".lock"))):  # one process hashes; the others read its result
        if not kept.is_file():
            tmp = kept.with_suffix(".tmp")
            tmp.write_text(content_hash(Path(root), skip=SKIP))
            tmp.replace(kept)
        return kept.read_text().strip()
