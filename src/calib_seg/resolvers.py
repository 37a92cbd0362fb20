"""OmegaConf resolvers used by the configs; imported by every entry point before Hydra composes."""

from __future__ import annotations

import re
import secrets
import sys
from typing import Any

from omegaconf import OmegaConf


def _safe_name(text: str, max_len: int = 200) -> str:
    """A job-folder-safe version of an override string (no slashes or shell-hostile characters).

    200 characters: Hydra sorts the overrides by key, so with a few fixed overrides (tiny sizes, epochs) a short
    cut hid the swept value (``experiment=...`` sorts after ``data.*``); 200 + the ``<num>_`` prefix stays
    below the 255-byte file-name limit of common file systems.
    """
    text = re.sub(r"[^A-Za-z0-9_.,=\-\[\]]+", "_", str(text)).strip("_")
    return text[:max_len] or "default"


def _job_dirname(*, _root_: Any) -> str:
    """The job-folder name after the index: the job's overrides, grid parameters first.

    Like Hydra's ``override_dirname`` (sorted ``key=value`` overrides minus ``exclude_keys``), except that the keys
    of ``hydra.sweeper.params`` (an ``hparams_search`` grid) come first, so the swept values stay visible when
    fixed overrides (tiny sizes, epochs, data) would otherwise push them past the length cut. Sorted otherwise,
    so the name does not depend on the order overrides were typed in (a re-run sweep finds its job folders).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = _root_.hydra
    opts = hydra_cfg.job.config.override_dirname
    exclude = set(opts.exclude_keys or [])
    swept = list((hydra_cfg.sweeper.get("params") or {}).keys())
    overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    kept = [o for o in overrides if o.key_or_group not in exclude]
    first = sorted((o for o in kept if o.key_or_group in swept), key=lambda o: swept.index(o.key_or_group))
    rest = sorted(o.input_line for o in kept if o.key_or_group not in swept)
    lines = [o.input_line for o in first] + rest
    return _safe_name(opts.item_sep.join(line.replace("=", opts.kv_sep, 1) for line in lines))


def register() -> None:
    """Register resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("uniq"):
        # cached: the sweep folder is resolved once in the launcher and the cache is copied into every job's
        # config (Hydra's copy_cache), so all jobs of a sweep agree on the suffix while two sweeps never do.
        OmegaConf.register_new_resolver("uniq", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("safe_name"):
        OmegaConf.register_new_resolver("safe_name", _safe_name)
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", _job_dirname)
    if not OmegaConf.has_resolver("is_interactive"):
        OmegaConf.register_new_resolver("is_interactive", lambda: sys.stdout.isatty())


register()
