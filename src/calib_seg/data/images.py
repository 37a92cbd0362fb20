"""Reading microscopy images into single-channel float arrays in [0, 1], one conversion rule everywhere.

Rules (also in the README, "Data formats"):
- uint8 is divided by 255; uint16 by ``2**bit_depth - 1`` when the bit depth is known, else by 65535;
- RGB(A) is converted to luminance with ITU-R 601 weights (0.299, 0.587, 0.114); alpha is dropped;
- float images must already lie in [0, 1], otherwise it is an error (we will not guess a scale);
- anything else (signed ints, 3-D stacks where a 2-D image is expected) is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_LUMA = np.array([0.299, 0.587, 0.114])


def read_raw(path: str | Path) -> np.ndarray:
    """Read an image file as stored (TIFF via tifffile, others via Pillow); errors name the file."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Exception as exc:  # truncated or corrupt files raise many different types
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    if arr.size == 0 or arr.ndim not in (2, 3):
        raise ValueError(f"cannot read image {path}: no 2-D pixel data (shape {arr.shape}); truncated or corrupt file?")
    return arr


def to_gray(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """Collapse RGB(A) (H, W, 3|4) to luminance, keep dtype semantics; a 2-D array passes through."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        dtype = arr.dtype
        gray = arr[..., :3].astype(np.float64) @ _LUMA
        return gray.astype(dtype) if np.issubdtype(dtype, np.integer) else gray
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D grey or RGB image, got shape {arr.shape}")
    return arr


def full_scale(dtype: np.dtype, bit_depth: int | None = None) -> float:
    """The value that maps to 1.0 for an integer image of this dtype (and optional camera bit depth)."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return float(2**bit_depth - 1) if bit_depth else 65535.0
    raise ValueError(f"unsupported integer image dtype {dtype}; use uint8, uint16 or float in [0, 1]")


def to_unit_float(arr: np.ndarray, name: str = "image", bit_depth: int | None = None) -> np.ndarray:
    """Convert a grey or RGB image to float32 in [0, 1] following the module's rules."""
    arr = to_gray(np.asarray(arr), name)
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not np.isfinite(arr).all() or lo < 0 or hi > 1:
            raise ValueError(f"{name}: float image must lie in [0, 1] with no NaN, found range [{lo}, {hi}]")
        return arr.astype(np.float32)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    return (arr.astype(np.float32) / full_scale(arr.dtype, bit_depth)).clip(0, 1)


def read_image(path: str | Path, bit_depth: int | None = None) -> np.ndarray:
    """Read one image file as float32 (H, W) in [0, 1]."""
    return to_unit_float(read_raw(path), str(path), bit_depth)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
