"""Generic file I/O every room uses: atomic writes, content fingerprints, the no-overwrite rule.

Kept free of calib_seg imports so the data, metrics, callbacks and record modules can all depend on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def content_hash(obj: Any, length: int | None = 16) -> str:
    """sha256 of ``obj`` as sorted JSON: the fingerprint of generator parameters or a file manifest."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:length] if length else digest


def refuse_existing_output(path: str | Path, overwrite: bool = False, hint: str = "choose a new folder") -> None:
    """Nothing is replaced silently: an existing file or non-empty folder at ``path`` is an error unless ``overwrite``."""
    path = Path(path)
    taken = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if taken and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; {hint} (nothing is overwritten)")
