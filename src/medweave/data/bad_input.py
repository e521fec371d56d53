"""What happens to a broken row or file: stop (the default) or skip it with a warning.

Strict mode raises at the first fault, naming the file, the row or field, and what was expected.
Lenient mode (``data.lenient=true``, or ``lenient=true`` for ``medweave-import``) is for real
exports where a few bad rows should not stop a study: each fault is logged with how
many rows it covers, the rows are left out, and ``summary()`` lists what was skipped. Rows are
named by their number in the file, never by subject ID.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from medweave.errors import MedweaveError

log = logging.getLogger(__name__)


class BadInput:
    def __init__(self, lenient: bool = False):
        self.lenient = lenient
        self.skipped: Counter[str] = Counter()

    def fault(self, file: Path | str, where: str, expected: str, count: int = 1) -> None:
        """Report ``count`` bad rows (or one bad file) at ``where`` ("row 17, field time").

        Raises MedweaveError in strict mode; in lenient mode the caller skips them and goes on.
        """
        message = f"{file}: {where}: {expected}"
        if not self.lenient:
            more = f" ({count} rows in all)" if count > 1 else ""
            raise MedweaveError(message + more)
        self.skipped[f"{file}: {expected}"] += count
        log.warning("skipped %d: %s (lenient mode)", count, message)

    def summary(self) -> dict[str, int]:
        return dict(self.skipped)
