"""Replacing a folder so that a crash leaves the old one or the new one, never neither or half."""

from __future__ import annotations

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
