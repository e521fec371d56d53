"""Folders as units: replaced whole (a crash leaves the old one or the new one, never half), and
hashed by content (cache keys, model provenance)."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path


def replace_folder(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out`` (a sibling), replacing what is there.

    The old folder is renamed aside first and deleted only once the new one is in place; if the
    move fails, the old one is put back.
    """
    new, out = Path(new), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def content_hash(path: Path, skip: tuple[str, ...] = ()) -> str:
    """blake2b of a file's bytes, or of a folder's relative paths and bytes. Hidden files (editors',
    lock files) and paths under the ``skip`` prefixes are left out."""
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        rel = file.relative_to(path).as_posix() if file != path else file.name
        if rel.startswith(skip) or any(part.startswith(".") for part in Path(rel).parts):
            continue
        digest.update(rel.encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
