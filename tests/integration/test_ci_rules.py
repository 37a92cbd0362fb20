"""CI must not go green on skipped evidence: a skip of a SLURM or shared-data test fails the run when CI is set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers.paths import REPO

INNER = '''
import pytest

@pytest.fixture
def slurm_cluster():
    pytest.skip("no SLURM here")

def test_needs_slurm(slurm_cluster):
    pass

def test_needs_shared(shared_dir):
    pass

def test_ordinary_skip():
    pytest.skip("nothing required")
'''


def _inner_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    """A tiny suite under our conftest (and the helpers it imports) in a folder without ../shared beside it."""
    root = tmp_path / "repo"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    shutil.copytree(REPO / "tests" / "helpers", root / "tests" / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))  # the conftest imports them
    (root / "tests" / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_in_ci_skipped_slurm_and_shared_data_tests_fail_and_ordinary_skips_stay_skips(tmp_path):
    out = _inner_pytest(tmp_path, "true")
    assert out.returncode == 1, out.stdout[-3000:]
    assert "1 skipped" in out.stdout and "2 errors" in out.stdout, out.stdout[-3000:]
    assert "skipped in CI (CI='" in out.stdout and "Skip reason: no SLURM here" in out.stdout
    assert "the shared data folder" in out.stdout


def test_outside_ci_missing_resources_are_skips_listed_with_their_reason(tmp_path):
    out = _inner_pytest(tmp_path, "false")
    assert out.returncode == 0, out.stdout[-3000:]
    assert "3 skipped" in out.stdout
    assert "SKIPPED [1] tests/test_inner.py" in out.stdout and "no SLURM here" in out.stdout


def test_ci_script_runs_the_readme_test_command_and_the_slow_tier_with_ci_set_and_gates_on_both():
    script = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "`make test` runs the fast suite" in readme and "`make test-slow`" in readme
    assert "\nmake test ARGS=" in script and "export CI=" in script
    assert "\nmake test-slow ARGS=" in script
    assert script.index("\nmake test ARGS=") < script.index("\nmake test-slow ARGS=")  # fast tier first
    # both exit codes decide the verdict; a tier that collected nothing fails too
    assert 'check "make test" "$fast"' in script and 'check "make test-slow" "$slow"' in script
    assert '[ "$fast" -eq 0 ] && [ "$slow" -eq 0 ] ||' in script
