"""Writing and checking a BioImage Model Zoo package (format 0.5) with the ecosystem's own libraries.

Needs the optional ``export`` extra (``pip install -e ".[export]"``): ``bioimageio.spec`` validates the
description, ``bioimageio.core`` runs the packaged test (test input through every weight format, compared with
the expected output calib_seg computed). Nothing here reaches the network: the description holds no URL and no
GitHub user name (the spec checks those online), covers are written by us (the spec would generate them), and
:func:`offline` refuses and records every connection attempt while the libraries run.
"""

from __future__ import annotations

import contextlib
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calib_seg.export_recipe import Recipe

RDF_NAME = "rdf.yaml"
ONNX_OPSET = 17
WEIGHT_FILES = {"pytorch_state_dict": "weights_state_dict.pt", "torchscript": "weights_torchscript.pt",
                "onnx": "weights.onnx"}


class ExportError(RuntimeError):
    """The package could not be written or did not pass bioimageio's validation or test."""


def require_bioimageio() -> None:
    """Raise a clear error unless the ``export`` extra is installed."""
    missing = []
    for mod in ("bioimageio.spec", "bioimageio.core", "onnx", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ExportError(f"the BioImage Model Zoo export needs {', '.join(missing)}: "
                          'pip install -c constraints.txt -e ".[export]"')


@contextlib.contextmanager
def offline(attempts: list[str] | None = None) -> Iterator[list[str]]:
    """Refuse every outgoing internet connection (and name lookup) inside the block; record what was tried.

    bioimageio turns failed requests into warnings, so refusing alone would hide an attempt: the caller checks
    the returned list (``export`` fails when it is not empty). Unix sockets (local IPC) are left alone.
    """
    attempts = [] if attempts is None else attempts
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(f"connect {address}")
            raise OSError(f"calib_seg export is offline: refused connection to {address}")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            attempts.append(f"lookup {host}")
            raise OSError(f"calib_seg export is offline: refused name lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.getaddrinfo = real_connect, real_getaddrinfo  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------------ weights
def write_weights(net: nn.Module, example: torch.Tensor, other_size: torch.Tensor, out: Path,
                  state_dict_kwargs: dict[str, Any]) -> dict[str, Path]:
    """State dict, TorchScript (traced) and ONNX of ``net``; each checked against eager PyTorch at two sizes.

    Tracing records one input size; dynamic axes are declared for ONNX, and both exports are run at a second
    size so that a trace that baked a shape in fails here rather than in Fiji.
    """
    import onnxruntime

    net = net.eval()
    paths = {k: out / v for k, v in WEIGHT_FILES.items()}
    torch.save(net.state_dict(), paths["pytorch_state_dict"])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks, exporter deprecations
        traced = torch.jit.trace(net, example, check_trace=False)
        traced.save(str(paths["torchscript"]))
        spatial = {0: "batch"} if example.ndim == 2 else {0: "batch", 2: "y", 3: "x"}
        out_axes = {0: "batch"} if state_dict_kwargs.get("scalar_output") else spatial
        torch.onnx.export(net, (example,), str(paths["onnx"]), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch", 2: "y", 3: "x"}, "output": out_axes},
                          opset_version=ONNX_OPSET, dynamo=False)
    session = onnxruntime.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    loaded = torch.jit.load(str(paths["torchscript"]))
    for x in (example, other_size):
        with torch.no_grad():
            ref = net(x).numpy()
            got = {"torchscript": loaded(x).numpy(), "onnx": session.run(None, {"input": x.numpy()})[0]}
        for fmt, y in got.items():
            if y.shape != ref.shape or not np.allclose(y, ref, rtol=1e-4, atol=1e-5):
                diff = float(np.abs(y - ref).max()) if y.shape == ref.shape else f"shape {y.shape} vs {ref.shape}"
                raise ExportError(f"{fmt} export disagrees with PyTorch on input {tuple(x.shape)}: {diff}")
    return paths


# ------------------------------------------------------------------------------------------------ cover
def write_cover(raw: np.ndarray, output: np.ndarray, recipe: Recipe, path: Path) -> Path:
    """A 2:1 cover: the test input and what the model makes of it (probability map or predicted density)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=80)
    axes[0].imshow(raw, cmap="gray")
    axes[0].set_title("test input")
    if recipe.kind == "segmentation":
        axes[1].imshow(output.reshape(raw.shape), cmap="magma", vmin=0, vmax=1)
        axes[1].set_title("foreground probability")
    else:
        axes[1].imshow(raw, cmap="gray")
        axes[1].set_title(f"{recipe.output_name}: {float(output.reshape(-1)[0]):.4g}")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ description
def _space_axes(recipe: Recipe, pixel_size_um: float | None, output: bool) -> list[dict[str, Any]]:
    axes = []
    for a in ("y", "x"):
        axis: dict[str, Any] = {"type": "space", "id": a}
        if pixel_size_um:
            axis.update(unit="micrometer", scale=float(pixel_size_um))
        if output:
            axis["size"] = {"tensor_id": "raw", "axis_id": a}
            if recipe.halo:
                axis["halo"] = recipe.halo
        else:
            axis["size"] = {"min": recipe.size_min, "step": recipe.size_step}
        axes.append(axis)
    return axes


def _preprocessing(recipe: Recipe) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    if recipe.input_max != 1:  # camera counts -> [0, 1], calib_seg's one conversion rule
        steps.append({"id": "scale_linear", "kwargs": {"gain": 1.0 / recipe.input_max, "offset": 0.0}})
    if (recipe.mean, recipe.std) != (0.0, 1.0):  # the training split's pixel statistics, (x - mean) / std exactly
        steps.append({"id": "scale_linear", "kwargs": {"gain": 1.0 / recipe.std, "offset": -recipe.mean / recipe.std}})
    if len(steps) > 1:  # without a closing ensure_dtype the spec casts back to the raw type (uint16)
        steps.append({"id": "ensure_dtype", "kwargs": {"dtype": "float32"}})
    return steps


def _postprocessing(recipe: Recipe) -> list[dict[str, Any]]:
    if recipe.sigmoid:
        return [{"id": "sigmoid"}]
    if (recipe.out_gain, recipe.out_offset) != (1.0, 0.0):
        return [{"id": "scale_linear", "kwargs": {"gain": recipe.out_gain, "offset": recipe.out_offset}}]
    return []


def tensor_descriptions(recipe: Recipe, pixel_size_um: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``inputs[0]`` and ``outputs[0]`` entries of the description."""
    batch_channel = [{"type": "batch"}, {"type": "channel", "channel_names": ["grey"]}]
    inp = {"id": "raw", "description": f"grey image, raw values 0..{recipe.input_max:g}",
           "axes": batch_channel + _space_axes(recipe, pixel_size_um, output=False),
           "test_tensor": {"source": "test_input.npy"}, "sample_tensor": {"source": "sample_input.tif"},
           "data": {"type": recipe.input_dtype, "range": [0, recipe.input_max]},
           "pad": {"mode": "reflect"}, "preprocessing": _preprocessing(recipe)}
    if recipe.kind == "density":
        out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": [recipe.output_name]}]
        out = {"id": "density", "description": recipe.output_formula[:128], "axes": out_axes,
               "test_tensor": {"source": "test_output.npy"}, "data": {"type": "float32"}}
    else:
        out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": ["mitochondria"]},
                    *_space_axes(recipe, pixel_size_um, output=True)]
        out = {"id": "probability", "description": "foreground probability in [0, 1]", "axes": out_axes,
               "test_tensor": {"source": "test_output.npy"}, "sample_tensor": {"source": "sample_output.tif"},
               "data": {"type": "float32", "range": [0.0, 1.0]}}
    out["postprocessing"] = _postprocessing(recipe)
    return inp, out


def weights_description(architecture: dict[str, Any]) -> dict[str, Any]:
    """``weights``: the state dict is the original, TorchScript and ONNX are converted from it."""
    version = torch.__version__.split("+")[0]
    return {
        "pytorch_state_dict": {
            "source": WEIGHT_FILES["pytorch_state_dict"], "pytorch_version": version,
            "architecture": {"callable": "PackagedNetwork", "import_from": "calib_seg.models.packaged",
                             "kwargs": architecture},
            "comment": "needs calib_seg installed (architecture imported from calib_seg.models.packaged)"},
        "torchscript": {"source": WEIGHT_FILES["torchscript"], "pytorch_version": version,
                        "parent": "pytorch_state_dict", "comment": "traced with torch.jit.trace"},
        "onnx": {"source": WEIGHT_FILES["onnx"], "opset_version": ONNX_OPSET, "parent": "pytorch_state_dict",
                 "comment": "torch.onnx.export (TorchScript-based exporter), dynamic batch and spatial axes"},
    }


def build_and_validate(content: dict[str, Any], root: Path) -> Any:
    """Validate ``content`` (the rdf.yaml as a dict, file paths relative to ``root``) with bioimageio.spec.

    Returns the ``ModelDescr``; raises :class:`ExportError` with the spec's own error list when it is invalid.
    """
    from bioimageio.spec import InvalidDescr, ValidationContext, build_description

    with ValidationContext(root=root, perform_io_checks=True, log_warnings=False):
        descr = build_description(content)
    if isinstance(descr, InvalidDescr) or descr.validation_summary.status == "failed":
        raise ExportError("bioimageio.spec rejected the description:\n"
                          + descr.validation_summary.format(include_conda_list=False))
    return descr


def run_packaged_test(rdf: Path) -> Any:
    """``bioimageio.core.test_model`` on the written package (every weight format); raises unless it passed."""
    from bioimageio.core import test_model

    summary = test_model(rdf, devices=["cpu"], determinism="full")
    if summary.status != "passed":
        raise ExportError(f"bioimageio.core's model test failed for {rdf}:\n"
                          + summary.format(include_conda_list=False))
    return summary
