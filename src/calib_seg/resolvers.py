"""OmegaConf resolvers used by the configs; imported by every entry point before Hydra composes."""

from __future__ import annotations

import re
import secrets
import sys

from omegaconf import OmegaConf


def _safe_name(text: str, max_len: int = 200) -> str:
    """A job-folder-safe version of an override string (no slashes or shell-hostile characters).

    200 characters: Hydra sorts the overrides by key, so with a few fixed overrides (tiny sizes, epochs) a short
    cut hid the swept value (``experiment=...`` sorts after ``data.*``); 200 + the ``<num>_`` prefix stays
    below the 255-byte file-name limit of common file systems.
    """
    text = re.sub(r"[^A-Za-z0-9_.,=\-\[\]]+", "_", str(text)).strip("_")
    return text[:max_len] or "default"


def register() -> None:
    """Register resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("uniq"):
        # cached: the sweep folder is resolved once in the launcher and the cache is copied into every job's
        # config (Hydra's copy_cache), so all jobs of a sweep agree on the suffix while two sweeps never do.
        OmegaConf.register_new_resolver("uniq", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("safe_name"):
        OmegaConf.register_new_resolver("safe_name", _safe_name)
    if not OmegaConf.has_resolver("is_interactive"):
        OmegaConf.register_new_resolver("is_interactive", lambda: sys.stdout.isatty())


register()
