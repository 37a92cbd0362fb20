"""Shared test helpers: constants, config composers, a pause callback, SLURM probes (no fixtures, no tests).

Test modules import from here (``from helpers.configs import TINY_BEADS``); ``tests/`` is on ``sys.path`` through
pyproject's ``[tool.pytest.ini_options] pythonpath``. Shared fixtures live in ``conftest.py``.
"""
