"""What a user sees around the Hydra entry points: override typos, known noise, and a plain-text log.

- :func:`launch` starts a ``@hydra.main`` app after checking the command line's overrides against the composed
  config. Hydra itself stops at the *first* unknown key with ``Key 'max_epoch' is not in struct`` and the advice
  to add it with ``+`` (exit 1); :func:`override_problems` names *every* unknown key and unknown group option,
  with a did-you-mean and the allowed keys, and the app exits 2 (docs/reliability.md). With
  ``HYDRA_FULL_ERROR=1`` the check is skipped, so Hydra's own full error shows.
- :func:`quiet_known_noise` silences warnings and tips a user cannot act on (filtered by message, at the
  source, so anything new still shows).
- :func:`to_log` / :func:`tee_to_log` put console lines (epoch lines, the summary, verdicts) into the run's
  ``<job>.log`` too, without printing them twice on the console.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from omegaconf import DictConfig

EXIT_CONFIG = 2
#: (message regex, category) of warnings that say nothing actionable on this project's runs
_NOISE_WARNINGS = (
    # the local SLURM of `make slurm-up` puts srun on PATH; calib_seg submits through submitit, not srun
    (r"The `srun` command is available on your system but is not used", Warning),
    # Lightning's own use of torch's pytree API (pytorch_lightning/utilities/_pytree.py)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning),
    # small data sets have fewer batches per epoch than the step-logging interval; metrics are logged per epoch
    (r"The number of training batches \(\d+\) is smaller than the logging interval", Warning),
)
_NOISE_LOG_PREFIXES = ("💡 Tip:",)  # Lightning advertising its cloud logger on every Trainer
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ------------------------------------------------------------------------------------------------- noise
class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOISE_LOG_PREFIXES)


def quiet_known_noise() -> None:
    """Install the warning and log filters of :data:`_NOISE_WARNINGS` (idempotent; called by every entry point)."""
    for pattern, category in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    # rank_zero_info logs through these module loggers (lightning_utilities' rank_zero.log is re-pointed by both)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


# ------------------------------------------------------------------------------------------------- log file
#: ``extra=`` of a log record that goes to the run's log file but not to the console (it is printed already)
FILE_ONLY = {"console": False}


class ConsoleFilter(logging.Filter):
    """On the console handler of Hydra's job logging (conf/hydra/default.yaml): drops :data:`FILE_ONLY` records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


def to_log(text: str) -> None:
    """Write ``text`` (ANSI codes stripped) to the run's log file only (nothing outside a Hydra job)."""
    logging.getLogger("calib_seg.console").info(_ANSI.sub("", text).rstrip("\n"), extra=FILE_ONLY)


class _Tee(io.TextIOBase):
    """A text stream that writes to ``target`` and keeps a copy (for the log file)."""

    def __init__(self, target: Any):
        self.target, self.copy = target, io.StringIO()

    def write(self, s: str) -> int:
        self.copy.write(s)
        return self.target.write(s)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.target, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")


@contextlib.contextmanager
def tee_to_log(title: str = "end of run:") -> Iterator[None]:
    """Everything printed to stdout inside the block also goes, as plain text under ``title``, to the log file."""
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        yield
    finally:
        sys.stdout = tee.target
        if tee.copy.getvalue().strip():
            to_log(f"{title}\n{tee.copy.getvalue()}")


# ------------------------------------------------------------------------------------------------- overrides
def _did_you_mean(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _groups(loader: Any, parent: str = "") -> set[str]:
    found: set[str] = set()
    for name in loader.list_groups(parent):
        full = f"{parent}/{name}" if parent else name
        found |= {full, *_groups(loader, full)}
    return found


def _values(override: Any) -> list[Any]:
    """The value(s) of an override: every element of a sweep, else its one value."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator()) if override.is_discrete_sweep() else []
    value = override.value()
    return list(value) if isinstance(value, list) else [value]


def _first(override: Any) -> str:
    """The override as one run of a sweep would see it (its first value)."""
    if not override.is_sweep_override():
        return override.input_line
    values = _values(override)
    return f"{override.get_key_element()}={values[0]}" if values else ""


def _lookup(cfg: DictConfig, key: str) -> tuple[bool, str | None]:
    """(whether ``key`` exists in ``cfg``, why it cannot be overridden); nothing is resolved on the way.

    A path through a value, null or interpolation cannot be judged here: (False, None), Hydra decides.
    """
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or node._is_none() or node._is_missing() or node._is_interpolation():
            return False, None
        keys = [str(k) for k in node.keys()]
        if part not in keys:
            where = ".".join(parts[:i])
            place = f"under {where}" if where else "at the top level"
            return False, (f"{key}: unknown key{_did_you_mean(part, keys)}; allowed keys {place}: "
                           f"{', '.join(keys)}")
        node = node._get_node(part)
    return True, None


def override_problems(overrides: Sequence[str], config_name: str = "train") -> list[str]:
    """Every unknown key and unknown group option among command-line ``overrides`` (empty when all are fine).

    Group choices (``model=unet``, sweeps included) are checked against the options in ``conf/``; the config
    they compose is then the reference for the plain keys (``trainer.max_epochs=3``): each must exist there.
    ``+key`` must not exist yet, ``~key`` must. Keys added with ``+`` may be overridden by later overrides.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from calib_seg.config import CONF_DIR

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        return [str(exc).strip()]
    problems: list[str] = []
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        loader = GlobalHydra.instance().config_loader()
        groups = _groups(loader)
        choices, values = [], []
        for o in parsed:
            (choices if o.key_or_group in groups else values).append(o)
        for o in choices:
            if o.is_delete():
                continue
            options = loader.get_group_options(o.key_or_group)
            for v in _values(o):
                if v is not None and str(v) not in options and str(v) != "null":
                    problems.append(f"{o.key_or_group}={v}: unknown option{_did_you_mean(str(v), options)}; "
                                    f"allowed: {', '.join(options)}")
        if problems:
            return problems
        try:
            cfg = compose(config_name=config_name, overrides=[s for s in map(_first, choices) if s],
                          return_hydra_config=True)
        except HydraException as exc:
            cause = f"\n{exc.__cause__}" if exc.__cause__ is not None else ""
            return [f"{exc}{cause}".strip()]
    added: list[str] = []
    for o in values:
        key = o.key_or_group
        if o.is_force_add() or any(key == a or key.startswith(a + ".") for a in added):
            added.append(key)
            continue
        exists, problem = _lookup(cfg, key)
        if o.is_add():
            if exists:
                problems.append(f"{key}: already in the config, so it takes no '+': write {o.input_line[1:]}")
            parts = key.split(".")  # the node the add creates: later overrides may refer to keys inside it
            added.append(next((".".join(parts[:j]) for j in range(1, len(parts) + 1)
                               if not _lookup(cfg, ".".join(parts[:j]))[0]), key))
        elif problem:
            problems.append(problem)
    return problems


def _hydra_args(argv: Sequence[str]) -> Any | None:
    from hydra._internal.utils import get_args_parser

    try:
        args, _ = get_args_parser().parse_known_args(list(argv))
    except SystemExit:  # argparse already said what is wrong
        return None
    return args


def launch(app: Callable[[], Any], config_name: str, argv: Sequence[str] | None = None) -> Any:
    """Run the ``@hydra.main`` ``app`` after :func:`override_problems` found nothing (else message + exit 2)."""
    quiet_known_noise()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _hydra_args(argv)
    skip = (args is None or not args.overrides or os.environ.get("HYDRA_FULL_ERROR") == "1" or args.help or args.hydra_help
            or args.shell_completion or args.info or args.config_path or args.config_dir or args.config_name
            or args.experimental_rerun)
    if not skip:
        from hydra.core.global_hydra import GlobalHydra

        from calib_seg.validation import ConfigError

        problems = override_problems(args.overrides, config_name)
        GlobalHydra.instance().clear()
        if problems:
            print(f"config error: {ConfigError(problems)}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_CONFIG)
    return app()
