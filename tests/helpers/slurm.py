"""Probes for a local SLURM cluster (scripts/slurm-local-up); the ``slurm_cluster`` fixture in conftest.py uses them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

STATE_DIR = Path(os.environ.get("SLURM_LOCAL_STATE_DIR", "/tmp/calib_seg-slurm"))
SLURM_UP_TIMEOUT_S = 600  # first run installs slurm-wlm + munge with apt-get; later runs take < 2 s
#: site settings a developer may export; a test cluster must not inherit them
SITE_VARS = ("CALIB_SEG_SLURM_PARTITION", "CALIB_SEG_SLURM_ACCOUNT", "CALIB_SEG_SLURM_QOS",
             "CALIB_SEG_SLURM_CONSTRAINT", "CALIB_SEG_PBS_QUEUE", "CALIB_SEG_PBS_ACCOUNT")


def sinfo_state() -> str:
    """The first node's state as ``sinfo`` reports it (``idle``, ``mix``, ...), or "" when SLURM does not answer."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def can_admin() -> bool:
    """True when this process may start daemons: root, or passwordless sudo."""
    if os.geteuid() == 0:
        return True
    if not shutil.which("sudo"):
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10).returncode == 0
