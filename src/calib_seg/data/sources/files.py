"""Files behind a source: the content manifest that identifies them in the run record."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path


def file_manifest(paths: Sequence[Path], root: Path) -> dict:
    """{"sha256": digest over all entries, "entries": [[relative path, bytes, sha256], ...]}."""
    entries = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        rel = str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p)
        entries.append([rel, Path(p).stat().st_size, h.hexdigest()])
    total = hashlib.sha256(repr(entries).encode()).hexdigest()
    return {"sha256": total, "entries": entries}
