"""Share a trained model as a BioImage Model Zoo package: ``python -m calib_seg.export <run folder or checkpoint> --out DIR``.

The package (format 0.5: ``rdf.yaml`` + files, and a zip of them) holds the network as PyTorch state dict,
TorchScript and ONNX; the input scaling and normalisation the model was trained with as pre-processing; the
task's output transform as post-processing where the format can express it (what it cannot express is written
plainly in the description and the package README); axes with pixel size, valid tile sizes and the halo from the
measured receptive field; a test input with the output calib_seg computes for it; a cover; the training data,
metrics from ``run.json``, license, citations and code version. Export fails loudly unless ``bioimageio.spec``
validates the description and ``bioimageio.core``'s model test passes on the written package. Nothing is
downloaded (see :func:`calib_seg.export_bioimageio.offline`). Needs the ``export`` extra.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from calib_seg import resolvers  # noqa: F401  (run configs may use ${uniq:} etc.)
from calib_seg.checkpoints import (
    load_run_config,
    load_task,
    missing_density_normalisation,
    read_checkpoint,
    resolve_checkpoint,
    run_dir_of,
    training_camera,
)
from calib_seg.data.images import full_scale, read_raw, to_gray
from calib_seg.export_recipe import (
    Recipe,
    as_unit,
    density_recipe,
    expected_output,
    segmentation_recipe,
    valid_crop,
)
from calib_seg.fileio import refuse_existing_output
from calib_seg.records import code_state, read_record

FORMATS = ("bioimageio",)
# Citations by DOI only: the spec checks URLs online, DOIs by their pattern.
_CITES = {
    "unet": ("Ronneberger, Fischer, Brox (2015): U-Net: Convolutional Networks for Biomedical Image Segmentation",
             "10.1007/978-3-319-24574-4_28"),
    "attention": ("Oktay et al. (2018): Attention U-Net: Learning Where to Look for the Pancreas",
                  "10.48550/arXiv.1804.03999"),
    "epfl": ("Lucchi et al. (2012): Supervoxel-Based Segmentation of Mitochondria in EM Image Stacks With Learned "
             "Shape Features (EPFL/Lucchi data)", "10.1109/TMI.2011.2171705"),
}


def task_kind(run_cfg: DictConfig) -> str:
    """``density`` or ``segmentation`` from the run's task config."""
    target = str((run_cfg.get("task") or {}).get("_target_", ""))
    if target.endswith("DensityRegressionTask"):
        return "density"
    if target.endswith("SegmentationTask"):
        return "segmentation"
    raise ValueError(f"cannot export task {target!r}: only DensityRegressionTask and SegmentationTask are known")


def check_exportable(ckpt: Path, kind: str) -> None:
    """Refuse checkpoints that lack what the package must state (clear message, before anything is written)."""
    state = read_checkpoint(ckpt)
    if kind == "density":
        missing = missing_density_normalisation(state["state_dict"])
        if missing:
            raise ValueError(
                f"{ckpt} has no stored normalisation ({', '.join(missing)} missing): it was written by an older "
                "calib_seg version that did not keep the input statistics and the fitted target transform in the "
                "checkpoint, so the package cannot state how to normalise inputs or undo the target transform. "
                "Retrain with this version (python -m calib_seg.train <same overrides>) and export the new run.")


# ------------------------------------------------------------------------------------------------ test image
def test_image(run_cfg: DictConfig, kind: str, path: str | Path | None, input_max: float | None,
               bit_depth: int | None) -> tuple[np.ndarray, float]:
    """(raw 2-D test image, full scale): ``path``'s first frame, else the first image of the run's test split."""
    if path is not None:
        raw = read_raw(path)
        raw = raw[0] if raw.ndim == 3 and raw.shape[-1] not in (3, 4) else raw
        raw = to_gray(raw, str(path))
        auto = 1.0 if np.issubdtype(raw.dtype, np.floating) else full_scale(raw.dtype, bit_depth)
    else:
        from hydra.utils import instantiate

        dm = instantiate(run_cfg.data)
        if kind == "density":
            beads = dm.prepare()
            raw = beads.images[int(dm.split.test[0])]
            auto = float(beads.scale)
        else:
            raw = np.asarray(dm.get_split("test").images[0], dtype=np.float32)
            auto = 1.0
    scale = float(input_max or auto)
    if np.issubdtype(raw.dtype, np.floating) and scale != 1:
        # [0, 1] data packaged for raw camera counts: quantise as the camera would
        raw = np.rint(np.clip(raw, 0, 1) * scale).astype(np.uint8 if scale == 255 else np.uint16)
    return raw, scale


# ------------------------------------------------------------------------------------------------ texts
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text).strip()[:64] or "calib_seg model"


def _cites(run_cfg: DictConfig, kind: str) -> list[dict[str, str]]:
    target = str(run_cfg.model.get("_target_", "")).lower()
    keys = (["unet"] if "unet" in target else []) + (["attention"] if "attention" in target else [])
    if "EPFL" in str(run_cfg.data.source.get("_target_", "")):
        keys.append("epfl")
    return [{"text": _CITES[k][0], "doi": _CITES[k][1]} for k in keys]


def _metrics(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in (record.get("test_metrics") or {}).items() if isinstance(v, (int, float))}


def documentation(recipe: Recipe, run_cfg: DictConfig, record: dict[str, Any], ckpt: Path,
                  pixel_size_um: float | None, tolerance: dict[str, float]) -> str:
    """The package README: what goes in, what comes out (with the exact formula), limits, validation."""
    m = _metrics(record)
    headline = "test/r2" if recipe.kind == "density" else "test/jaccard"
    lines = [f"# calib_seg {recipe.kind} model", "",
             f"Trained with calib_seg (run `{run_dir_of(ckpt).name}`, checkpoint `{ckpt.name}`).", "",
             "## Input", "",
             f"One grey image, axes (batch, channel, y, x), raw values 0..{recipe.input_max:g} ({recipe.input_dtype})"
             + (f", {pixel_size_um:g} µm per pixel" if pixel_size_um else "") + ".",
             f"Valid sizes per side: {recipe.size_min} + n * {recipe.size_step} px.",
             f"Pre-processing (as in training): x = raw / {recipe.input_max:g}; network input = (x - {recipe.mean:.9g}) / {recipe.std:.9g}.", "",
             "## Output", "", recipe.output_formula + ".", ""]
    if recipe.kind == "segmentation":
        lines += [f"Halo {recipe.halo} px per side (measured receptive-field radius {recipe.receptive_field_radius} "
                  f"px, rounded up to the pooling grid of {recipe.divisor} px): tile with at least this overlap.", ""]
    lines += ["## Not expressible in the package format", ""] + [f"- {t}" for t in recipe.not_expressible]
    lines += ["", "## Training data", "", "```", OmegaConf.to_yaml(run_cfg.data.source).strip(), "```",
              f"Fingerprint: `{(record.get('data_fingerprint') or {}).get('sha256')}`", "",
              "## Validation", "",
              f"Test metrics of the training run ({headline} is the headline):", ""]
    lines += [f"- {k}: {v:.6g}" for k, v in sorted(m.items())] or ["- (no test metrics in run.json)"]
    lines += ["", "The packaged test input was computed through calib_seg; bioimageio.core reproduces the "
              f"expected output with every weight format within relative {tolerance['relative_tolerance']:g} / "
              f"absolute {tolerance['absolute_tolerance']:g}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ export
def export(source: str | Path, out: str | Path, fmt: str = "bioimageio", test_image_path: str | Path | None = None,
           input_max: float | None = None, name: str | None = None, authors: list[str] | None = None,
           license_id: str = "MIT", overwrite: bool = False) -> Path:
    """Write the package for a run folder or checkpoint into ``out``; return its ``rdf.yaml``.

    Raises ``ValueError``/``FileNotFoundError`` for bad input (before anything is written) and
    :class:`~calib_seg.export_bioimageio.ExportError` when bioimageio rejects the package or its test fails.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    from calib_seg import export_bioimageio as bio

    bio.require_bioimageio()
    ckpt = resolve_checkpoint(source)
    run_cfg = load_run_config(ckpt)
    kind = task_kind(run_cfg)
    check_exportable(ckpt, kind)
    out = Path(out)
    refuse_existing_output(out, overwrite, hint="choose a new --out or pass --overwrite")
    record = read_record(run_dir_of(ckpt)) or {}
    bit, pixel = training_camera(run_cfg)
    task = load_task(ckpt, run_cfg)
    raw, scale = test_image(run_cfg, kind, test_image_path, input_max, bit)
    recipe = density_recipe(task, scale) if kind == "density" else segmentation_recipe(task, scale)
    if kind == "segmentation":
        raw = raw[: valid_crop(raw.shape[0], recipe.size_min, recipe.size_step),
                  : valid_crop(raw.shape[1], recipe.size_min, recipe.size_step)]
    unit = as_unit(raw, recipe)
    expected = expected_output(task, unit, recipe)

    from calib_seg.models.packaged import PackagedNetwork

    model_cfg = OmegaConf.to_container(run_cfg.model, resolve=True)
    architecture = {"architecture": model_cfg.pop("_target_"), "kwargs": model_cfg,
                    "scalar_output": kind == "density"}
    net = PackagedNetwork(**architecture).eval()
    net.net.load_state_dict(task.model.state_dict())

    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "test_input.npy", raw[None, None].astype(recipe.input_dtype))
    np.save(out / "test_output.npy", expected.astype(np.float32))
    import tifffile

    tifffile.imwrite(out / "sample_input.tif", raw.astype(recipe.input_dtype))
    if kind == "segmentation":
        tifffile.imwrite(out / "sample_output.tif", expected[0, 0])
    bio.write_cover(raw, expected, recipe, out / "cover.png")
    x = (torch.from_numpy(unit)[None, None] - recipe.mean) / recipe.std
    # a second valid size (and batch 2): a trace that baked in the test size fails here, not in Fiji
    other = torch.rand(2, 1, raw.shape[0] + 2 * recipe.size_step, raw.shape[1],
                       generator=torch.Generator().manual_seed(0))
    bio.write_weights(net, x, other, out, architecture)

    tolerance = ({"relative_tolerance": 1e-4, "absolute_tolerance": 1e-3, "mismatched_elements_per_million": 0}
                 if kind == "density" else
                 {"relative_tolerance": 1e-3, "absolute_tolerance": 1e-4, "mismatched_elements_per_million": 0})
    (out / "README.md").write_text(documentation(recipe, run_cfg, record, ckpt, pixel, tolerance))
    n_params = sum(p.numel() for p in task.model.parameters())
    content = description(recipe, run_cfg, record, ckpt, pixel, architecture, n_params, tolerance, name, authors,
                          license_id)
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_yaml_only

    rdf = out / bio.RDF_NAME
    with bio.offline() as attempts:
        descr = bio.build_and_validate(content, out)
        save_bioimageio_yaml_only(descr, file=rdf)
        summary = bio.run_packaged_test(rdf)
        save_bioimageio_package(rdf, output_path=out / f"{_slug(content['name']).replace(' ', '_')}.zip")
    if attempts:
        raise bio.ExportError(f"bioimageio tried to reach the network during export: {attempts}")
    summary.save_markdown(out / "validation.md")
    return rdf


def description(recipe: Recipe, run_cfg: DictConfig, record: dict[str, Any], ckpt: Path, pixel: float | None,
                architecture: dict[str, Any], n_params: int, tolerance: dict[str, float], name: str | None,
                authors: list[str] | None, license_id: str) -> dict[str, Any]:
    """The rdf.yaml content (format 0.5) as a dict; file paths are relative to the package folder."""
    from calib_seg import export_bioimageio as bio

    inp, outp = bio.tensor_descriptions(recipe, pixel)
    arch = architecture["architecture"].rsplit(".", 1)[-1]
    m = _metrics(record)
    if recipe.kind == "density":
        summary = (f"Bead density regression ({arch}): a grey image of calibration beads in, beads/mm² out. "
                   f"{recipe.output_formula}. Test R² {m.get('test/r2', float('nan')):.4f}.")
        tags = ["calib_seg", "pytorch", "2d", "regression", "density-estimation", "beads", "light-microscopy"]
    else:
        summary = (f"Mitochondria segmentation in EM ({arch}): foreground probability per pixel (sigmoid output; "
                   f"mask = probability >= {recipe.threshold:g}). Test Jaccard {m.get('test/jaccard', float('nan')):.4f}.")
        tags = ["calib_seg", "pytorch", "2d", "semantic-segmentation", "mitochondria", "electron-microscopy"]
    fingerprint = record.get("data_fingerprint") or {}
    return {
        "format_version": "0.5.12", "type": "model",
        "name": _slug(name or f"calib_seg {recipe.kind} {arch}"),
        "description": summary[:1024],
        "authors": [{"name": a} for a in (authors or ["calib_seg user"])],
        "cite": _cites(run_cfg, recipe.kind),
        "license": license_id, "tags": tags,
        "covers": [{"source": "cover.png"}], "documentation": {"source": "README.md"},
        "inputs": [inp], "outputs": [outp],
        "weights": bio.weights_description(architecture),
        "config": {
            "bioimageio": {
                "reproducibility_tolerance": [tolerance],
                "model_parameter_count": int(n_params),
                "training": {"training_epochs": record.get("epochs"),
                             "training_batch_size": run_cfg.data.get("batch_size"),
                             "initial_learning_rate": (run_cfg.task.get("optimizer") or {}).get("lr"),
                             "loss_function": run_cfg.task.get("loss")},
            },
            "calib_seg": {
                "version": metadata.version("calib_seg"),
                "export_code": code_state(),
                "training_code": (record.get("provenance") or {}).get("git_commit"),
                "checkpoint": ckpt.name, "run": run_dir_of(ckpt).name,
                "task": OmegaConf.to_container(run_cfg.task, resolve=True),
                "model": OmegaConf.to_container(run_cfg.model, resolve=True),
                "training_data": {"source": OmegaConf.to_container(run_cfg.data.source, resolve=True),
                                  "fingerprint": fingerprint},
                "test_metrics": m, "optimized_metric": record.get("optimized_metric"),
                "best_val": record.get("best_val"),
                "normalisation": {"input_max": recipe.input_max, "mean": recipe.mean, "std": recipe.std},
                "output_formula": recipe.output_formula, "not_expressible": recipe.not_expressible,
                "halo": recipe.halo, "receptive_field_radius": recipe.receptive_field_radius,
                "training_patch": run_cfg.data.get("patch_size"),
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: export, print where the package is; exit 2 on bad input, 1 when bioimageio rejects it."""
    p = argparse.ArgumentParser(prog="python -m calib_seg.export", description=__doc__.split("\n")[0])
    p.add_argument("source", help="run folder (its best checkpoint) or a .ckpt file")
    p.add_argument("--out", required=True, help="package folder to create (must not exist or be empty)")
    p.add_argument("--format", default="bioimageio", choices=FORMATS)
    p.add_argument("--test-image", help="image file for the packaged test (default: first image of the test split)")
    p.add_argument("--input-max", type=float, help="raw value that means 1.0 (255, 4095, 65535; 1 = float input "
                                                   "in [0, 1]); default from the data")
    p.add_argument("--name", help="model name (letters, digits, _+-() and spaces)")
    p.add_argument("--author", action="append", help="author name (repeat for several)")
    p.add_argument("--license", default="MIT", help="SPDX license id of the weights (default MIT)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package folder")
    args = p.parse_args(argv)
    from calib_seg.export_bioimageio import ExportError

    try:
        rdf = export(args.source, args.out, args.format, args.test_image, args.input_max, args.name, args.author,
                     args.license, args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {rdf} (validated by bioimageio.spec, packaged test passed in bioimageio.core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
