"""OmegaConf resolvers used by the configs; imported by every entry point before Hydra composes."""

from __future__ import annotations

import re
import secrets
import sys
from typing import Any

from omegaconf import OmegaConf

#: the longest job-folder name after ``<num>_`` (below the 255-byte file-name limit of common file systems)
MAX_DIRNAME = 200


def folder_value(value: str) -> str:
    """A swept value as it appears in a job-folder name: no brackets, braces, quotes, commas or spaces.

    ``[8,16,32]`` -> ``8-16-32``, ``'a b'`` -> ``a_b``, ``{k:v}`` -> ``k-v``; letters, digits and ``. - + =``
    stay. Lossy on purpose (the exact value is in the job's ``.hydra/overrides.yaml`` and ``run.json``).
    """
    text = re.sub(r"[\[\]{}'\"]", "", str(value))
    text = re.sub(r"\s*[,:]\s*", "-", text)
    return re.sub(r"[^A-Za-z0-9_.+=\-]+", "_", text) or "none"


def job_dirname(overrides: list[str], swept: list[str] | None, exclude: list[str] | tuple[str, ...] = ()) -> str:
    """The job-folder name after ``<num>_``: the swept parameters' values, ``key=value`` joined by ``_``.

    ``swept`` lists the keys the sweeper varies (in grid order); only those name the folder, so the fixed
    overrides (sizes, epochs, threads) never do and a re-run with ``+resume=true`` finds its folders by what the
    grid varies. ``swept=None`` (a sweeper that does not say what it sweeps): every override but ``exclude``,
    sorted. Empty when nothing is swept (the folder is then just ``<num>``). A name longer than
    :data:`MAX_DIRNAME` is cut and ends in a hash of the whole name, so it stays unique and stable.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    if swept is None:
        chosen = sorted((o for o in parsed if o.key_or_group not in set(exclude)), key=lambda o: o.key_or_group)
    else:
        order = {k.lstrip("+~"): i for i, k in enumerate(swept)}
        chosen = sorted((o for o in parsed if o.key_or_group in order), key=lambda o: order[o.key_or_group])
    name = "_".join(f"{o.key_or_group}={folder_value(o.get_value_element_as_str())}" for o in chosen)
    if len(name) > MAX_DIRNAME:
        import hashlib

        name = f"{name[:MAX_DIRNAME - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def job_folder(num: int | str, dirname: str) -> str:
    """A job folder's name: its number, then ``_<swept values>`` when something is swept."""
    return f"{num}_{dirname}" if dirname else str(num)


def _job_dirname(*, _root_: Any) -> str:
    """The ``${job_dirname:}`` resolver of ``hydra.sweep.subdir``: ``_`` + :func:`job_dirname` of this job, or "".

    The swept keys come from ``hydra.sweeper.swept_keys``, which calib_seg's sweepers (``calib_seg_basic``,
    ``calib_seg_optuna``) set for each job; with another sweeper, the keys of ``hydra.sweeper.params`` when it
    has any, else every override but ``hydra.job.config.override_dirname.exclude_keys``.
    """
    hydra_cfg = _root_.hydra
    sweeper = hydra_cfg.sweeper
    swept = sweeper.get("swept_keys")
    if swept is None and sweeper.get("params"):
        swept = list(sweeper.params.keys())
    name = job_dirname(list(hydra_cfg.overrides.task), None if swept is None else list(swept),
                       list(hydra_cfg.job.config.override_dirname.exclude_keys or []))
    return f"_{name}" if name else ""


def cpu_precision() -> str:
    """``bf16-mixed`` on a CPU with native bfloat16 matrix units (AMX or AVX-512 BF16), else ``32-true``.

    For presets that train on the CPU (``trainer.precision: ${cpu_precision:}``): on such a CPU, bf16 autocast
    runs the U-Net's convolutions through oneDNN's bf16 kernels (measured 1.65x faster per epoch than float32
    on the 2-core Sapphire Rapids machine, docs in the preset); without them bf16 is emulated and slower than
    float32, so those CPUs keep float32. The resolved value is what ``run.json`` records.
    """
    import torch

    cpu = getattr(torch, "cpu", None)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    native = any(bool(getattr(cpu, name, lambda: False)()) for name in probes)
    return "bf16-mixed" if native else "32-true"


def register() -> None:
    """Register resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("uniq"):
        # cached: the sweep folder is resolved once in the launcher and the cache is copied into every job's
        # config (Hydra's copy_cache), so all jobs of a sweep agree on the suffix while two sweeps never do.
        OmegaConf.register_new_resolver("uniq", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", _job_dirname)
    if not OmegaConf.has_resolver("is_interactive"):
        OmegaConf.register_new_resolver("is_interactive", lambda: sys.stdout.isatty())
    if not OmegaConf.has_resolver("cpu_precision"):
        OmegaConf.register_new_resolver("cpu_precision", cpu_precision)


register()
