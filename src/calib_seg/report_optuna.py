"""The Optuna part of a sweep report: trial table, best parameters, optimisation history, parameter
importance, compute saved.

``calib_seg.report`` calls :func:`optuna_section` for every sweep folder; it returns nothing unless the folder
holds an Optuna study (``optuna.db``, written by ``hydra/sweeper=calib_seg_optuna``). Trial states come from
the study: COMPLETE (a score), PRUNED (the pruner stopped a weak run, ``callbacks.optuna_pruning``, or the
training guard aborted a doomed one), FAIL (the job failed, or it was
interrupted by a kill: ``interrupted``; its parameters were then tried again in the trial named by ``retry of``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from calib_seg.report_rows import fmt_duration

STUDY_FILE = "optuna.db"


def load_study(sweep: Path) -> Any:
    """The single ``optuna.Study`` in ``<sweep>/optuna.db``; ``None`` without one."""
    import optuna

    storage = f"sqlite:///{sweep / STUDY_FILE}"
    summaries = optuna.get_all_study_summaries(storage=storage)
    if len(summaries) != 1:
        return None
    return optuna.load_study(study_name=summaries[0].study_name, storage=storage)


def _max_epochs(job_dir: str | None) -> int | None:
    """``trainer.max_epochs`` of the job's resolved config (run.json), for the epochs an early stop saved."""
    try:
        record = json.loads((Path(job_dir) / "run.json").read_text())
        return int(record["config"]["trainer"]["max_epochs"])
    except (TypeError, OSError, ValueError, KeyError):
        return None


def trial_rows(trials: list[Any]) -> list[dict[str, Any]]:
    """One row per trial: number, params, value, state, epochs, time, note (reason, retry, interruption)."""
    rows = []
    for t in trials:
        ua = t.user_attrs
        note = "interrupted by a kill" if ua.get("interrupted") else (ua.get("reason") or "")
        if "retry_of" in ua:
            note = f"retry of {ua['retry_of']}" + (f"; {note}" if note else "")
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
                     "epochs": ua.get("epochs"), "max_epochs": _max_epochs(ua.get("job_dir")),
                     "time_s": ua.get("wall_time_s"), "note": note})
    return rows


def _cell(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "/")


def trial_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`trial_rows`, one column per searched parameter."""
    names = sorted({k for r in rows for k in r["params"]})
    cols = ["trial", *names, "value", "state", "epochs", "time", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["number"], *(r["params"].get(n) for n in names), r["value"], r["state"], r["epochs"],
                 fmt_duration(r["time_s"]) if r["time_s"] is not None else None, r["note"][:120]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


#: how a trial's note starts when the in-job pruner (not the training guard) stopped it
PRUNER_NOTE = "pruned by Optuna"


def compute_saved(rows: list[dict[str, Any]]) -> str:
    """How many epochs the PRUNED trials (pruner or guard) did not train, against their ``max_epochs``."""
    pruned = [r for r in rows if r["state"] == "PRUNED" and r["max_epochs"] is not None]
    if not pruned:
        return "No trial was pruned."
    by_pruner = sum(r["note"].startswith(PRUNER_NOTE) for r in pruned)
    ran = sum(int(r["epochs"] or 0) for r in pruned)
    planned = sum(r["max_epochs"] for r in pruned)
    spent = sum(float(r["time_s"] or 0) for r in pruned)
    return (f"{len(pruned)} pruned trial(s) ({by_pruner} by the pruner, {len(pruned) - by_pruner} by the training "
            f"guard) trained {ran} of their {planned} planned epochs: {planned - ran} epoch(s) not spent; they took "
            f"{fmt_duration(spent)} in total.")


def importance_lines(study: Any, path: Path | None) -> list[str]:
    """Parameter importance over the completed trials: a table, and a bar figure at ``path`` (none when ``None``).
    Says why when it cannot be had. Optuna's mean-decrease-in-impurity evaluator (a seeded scikit-learn random
    forest); its default fANOVA evaluator fails in optuna 2.10 with current scikit-learn trees."""
    import optuna
    from optuna.importance import MeanDecreaseImpurityImportanceEvaluator

    try:
        scores = optuna.importance.get_param_importances(study, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=0))
    except ImportError:
        return ["Parameter importance needs scikit-learn (`pip install scikit-learn`, in the dev extra).", ""]
    except (ValueError, RuntimeError) as exc:  # too few completed trials, or no parameter varied
        return [f"Parameter importance is not available: {exc}", ""]
    if not scores:
        return []
    lines = ["### Parameter importance", "", "Mean decrease in impurity of a random forest fitted to the completed "
             "trials (sums to 1; with few trials it is a rough guide).", "", "| parameter | importance |", "|---|---|"]
    lines += [f"| `{k}` | {v:.3f} |" for k, v in scores.items()]
    if path is not None:
        import matplotlib.pyplot as plt

        from calib_seg import plots

        fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(scores)))
        names = list(scores)[::-1]
        ax.barh(names, [scores[n] for n in names])
        ax.set_xlabel("importance (mean decrease in impurity)")
        ax.set_xlim(0, 1)
        plots.save_figure(fig, path)
        lines += ["", f"![parameter importance]({path.parent.name}/{path.name})"]
    return lines + [""]


def history_figure(rows: list[dict[str, Any]], path: Path, title: str, maximize: bool = True) -> Path | None:
    """Optimisation history: each completed trial's value, the best so far, and where trials were pruned/failed."""
    from calib_seg import plots

    done = [(r["number"], r["value"]) for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not done:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs, ys = zip(*done)
    best, running = [], -math.inf if maximize else math.inf
    for y in ys:
        running = max(running, y) if maximize else min(running, y)
        best.append(running)
    ax.plot(xs, ys, "o", label="completed trial")
    ax.step(xs, best, where="post", label=f"best so far ({'max' if maximize else 'min'})")
    low = min(ys)
    for state, marker in (("PRUNED", "v"), ("FAIL", "x")):
        nums = [r["number"] for r in rows if r["state"] == state]
        if nums:
            ax.plot(nums, [low] * len(nums), marker, linestyle="none", label=f"{state.lower()} (no value)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return plots.save_figure(fig, path)


def optuna_section(sweep: Path, figures: bool = True, fig_dir: str = "report_figures") -> list[str]:
    """Markdown lines of the Optuna section of ``sweep``'s report (``[]`` when it holds no study)."""
    if not (sweep / STUDY_FILE).is_file():
        return []
    try:
        study = load_study(sweep)
    except ImportError:
        return ["## Optuna study", "", f"`{STUDY_FILE}` is here; install the hpo extra (`make install-hpo`) to "
                "report it.", ""]
    if study is None:
        return []
    import optuna

    name, maximize = study.study_name, study.direction == optuna.study.StudyDirection.MAXIMIZE
    rows = trial_rows(study.get_trials(deepcopy=False))
    states = [r["state"] for r in rows]
    md = [f"## Optuna study `{name}`", "",
          f"{len(rows)} trial(s): " + ", ".join(f"{states.count(s)} {s.lower()}" for s in sorted(set(states))) + ".", ""]
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if complete:
        best = (max if maximize else min)(complete, key=lambda r: r["value"])
        md += [f"Best: trial {best['number']}, value {best['value']:.4g}, parameters "
               + ", ".join(f"`{k}={v}`" for k, v in best["params"].items()), ""]
    md += [compute_saved(rows), "", trial_table(rows), ""]
    if figures:
        fig = history_figure(rows, sweep / fig_dir / "optuna_history.png", f"{name}: optimisation history",
                             maximize)
        if fig is not None:
            md += ["### Optimisation history", "", f"![optimisation history]({fig_dir}/optuna_history.png)", ""]
    return md + importance_lines(study, sweep / fig_dir / "optuna_importance.png" if figures else None)
