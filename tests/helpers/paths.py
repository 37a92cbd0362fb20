"""Where the tests, the repository and the shared data folder are."""

from __future__ import annotations

import os
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SHARED = REPO.parent / "shared"


def pythonpath_with_tests(env: dict[str, str]) -> str:
    """``env``'s PYTHONPATH with ``tests/`` first, so a subprocess can import ``helpers`` (e.g. a pause callback)."""
    return os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
