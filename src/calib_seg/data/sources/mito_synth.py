"""Synthetic EM source: train/val/test images from the generator in :mod:`calib_seg.data.simulators.mito`.

Image ``i`` of a split depends only on (seed, split, i), so validation and test are whole unseen images, and
:func:`write_mito_folder` writes the same images in the image-folder layout (``python -m calib_seg.synth mito``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from calib_seg.data.containers import SegSplit
from calib_seg.data.simulators.mito import GENERATOR_VERSION, MitoSynthParams, generate_mito_image
from calib_seg.data.sources.protocol import SPLITS, check_split_name
from calib_seg.fileio import content_hash, refuse_existing_output


def _params_from(params: MitoSynthParams | dict | None) -> MitoSynthParams:
    if params is None:
        return MitoSynthParams()
    if isinstance(params, MitoSynthParams):
        return params
    known = set(MitoSynthParams.__dataclass_fields__)
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unknown mito_synth parameter(s) {sorted(unknown)}; known: {sorted(known)}")
    fixed = {
        k: tuple(v) if isinstance(v, list | tuple) or hasattr(v, "__len__") else v for k, v in params.items()
    }
    return MitoSynthParams(**fixed)


def generate_split(
    n: int, height: int, width: int, seed: int, split: str, params: MitoSynthParams | None = None
) -> SegSplit:
    """``n`` images of one split; image ``i`` of ``split`` depends only on (seed, split, i)."""
    split_id = SPLITS.index(split)
    images, masks = [], []
    for i in range(n):
        img, m = generate_mito_image(height, width, np.random.default_rng([seed, split_id, i]), params)
        images.append(img)
        masks.append(m)
    return SegSplit(images, masks, [f"{split}_{i:03d}" for i in range(n)])


class MitoSynthSource:
    """Synthetic EM source for :class:`~calib_seg.data.segmentation.SegmentationDataModule`.

    Images are generated lazily on first use and cached; train/val/test images come from disjoint seed
    streams, so validation and test are whole unseen images.

    Args:
        n_train, n_val, n_test: images per split.
        height, width: image size in pixels.
        seed: generator seed.
        params: :class:`MitoSynthParams` or a dict of overrides (unknown keys are an error).
    """

    def __init__(
        self,
        n_train: int = 8,
        n_val: int = 2,
        n_test: int = 2,
        height: int = 512,
        width: int = 512,
        seed: int = 0,
        params: MitoSynthParams | dict | None = None,
    ):
        for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n < 1:
                raise ValueError(f"{name} must be >= 1, got {n}")
        self.n = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
        self.height, self.width, self.seed = int(height), int(width), int(seed)
        self.params = _params_from(params)
        self._cache: dict[str, SegSplit] = {}

    def split(self, name: str) -> SegSplit:
        """Generate (once) and return ``train``/``val``/``test``."""
        check_split_name(name)
        if name not in self._cache:
            self._cache[name] = generate_split(
                self.n[name], self.height, self.width, self.seed, name, self.params
            )
        return self._cache[name]

    def fingerprint(self) -> dict:
        """Generator version and every parameter: enough to regenerate the exact images."""
        fp = {
            "source": "mito_synth",
            "generator": GENERATOR_VERSION,
            "seed": self.seed,
            "size": [self.height, self.width],
            "n": dict(self.n),
            "params": asdict(self.params),
        }
        fp["sha256"] = content_hash(fp, length=None)
        return fp


def write_mito_folder(
    out_dir: str | Path,
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 2,
    size: int | tuple[int, int] = (768, 1024),
    seed: int = 0,
    params: MitoSynthParams | dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic set in the ``mito_folder`` layout: ``out_dir/{train,val,test}/{images,masks}/*.png``.

    Images are 8-bit grey PNG, masks 0/255 PNG; a split with 0 images is not written (``n_val=0`` gives the
    "no val/ folder" layout). Returns a summary (counts, foreground fraction per split, parameters).

    Raises:
        FileExistsError: ``out_dir`` holds files and ``overwrite`` is False.
    """
    from PIL import Image

    out = Path(out_dir)
    refuse_existing_output(out, overwrite, hint="choose a new folder or pass overwrite=True")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    p = _params_from(params)
    summary: dict = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "size": [h, w],
        "params": asdict(p),
        "splits": {},
    }
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n <= 0:
            continue
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        data = generate_split(n, h, w, seed, split, p)
        for img, m, name in zip(data.images, data.masks, data.names):
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(out / split / "images" / f"{name}.png")
            Image.fromarray((m * 255).astype(np.uint8)).save(out / split / "masks" / f"{name}.png")
        summary["splits"][split] = {"n": n, "foreground_fraction": data.foreground_fraction()}
    return summary
