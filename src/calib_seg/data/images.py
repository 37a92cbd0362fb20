"""Reading microscopy images into single-channel float arrays in [0, 1]: the one conversion rule of the project.

Every reader (bead folders, EM folders and stacks, predict) converts through :func:`to_unit_float`; the EM
reader imports it from here rather than keeping its own. Rules (docs/reliability.md, README "Data formats"):

- uint8 is divided by 255; uint16 by ``2**bit_depth - 1`` when the camera bit depth is known, else by 65535;
- signed 32/64-bit integers (how Pillow opens some 16-bit PNGs) are accepted when they fit 0..65535 and are
  scaled like uint16; other signed or wider integers are an error;
- bool maps to {0, 1};
- RGB(A) (last axis 3 or 4) becomes luminance with ITU-R 601 weights (0.299, 0.587, 0.114), computed in float
  after scaling, alpha dropped; :func:`to_gray` (used where images stay in their stored integer type, e.g. bead
  folders) rounds that luminance to the nearest integer level;
- palette PNGs are expanded to their stored colours (not palette indices) when read;
- float images must already lie in [0, 1] with no NaN/inf, otherwise it is an error (we will not guess a scale);
- anything else (3-D stacks where a 2-D image is expected, other dtypes) is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_LUMA = np.array([0.299, 0.587, 0.114])
#: appended to "cannot read image" errors of the readers that can skip unreadable files
SKIP_HINT = ("set data.source.skip_bad_files=true to skip unreadable files "
             "(they are listed under data_fingerprint.skipped_files in run.json)")


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
                if im.mode in ("P", "PA"):  # palette PNGs: the stored colours, not palette indices
                    im = im.convert("RGBA" if im.mode == "PA" else "RGB")
                arr = np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Exception as exc:  # truncated or corrupt files raise many different types
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    if arr.size == 0 or arr.ndim not in (2, 3):
        raise ValueError(f"cannot read image {path}: no 2-D pixel data (shape {arr.shape}); truncated or corrupt file?")
    return arr


def to_gray(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """Collapse RGB(A) (H, W, 3|4) to luminance in the stored dtype (integers rounded); 2-D passes through."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        dtype = arr.dtype
        gray = arr[..., :3].astype(np.float64) @ _LUMA
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(gray), info.min, info.max).astype(dtype)
        return gray
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D grey or RGB(A) image, got shape {arr.shape}")
    return arr


def full_scale(dtype: np.dtype, bit_depth: int | None = None) -> float:
    """The value that maps to 1.0 for an integer image of this dtype (and optional camera bit depth)."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return float(2**bit_depth - 1) if bit_depth else 65535.0
    raise ValueError(f"unsupported integer image dtype {dtype}; use uint8, uint16 or float in [0, 1]")


def check_unit_range(arr: np.ndarray, name: str = "image") -> None:
    """Raise ``ValueError`` naming ``name`` unless the float array is finite and inside [0, 1]."""
    if arr.size == 0:
        return
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: float image contains NaN or inf")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name}: float image values span [{lo:.4g}, {hi:.4g}], outside [0, 1]; rescale it before use "
            "(the project does not guess the intensity range of float data)"
        )


def _scale_to_unit(arr: np.ndarray, name: str, bit_depth: int | None) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype in (np.uint8, np.uint16):
        return (arr.astype(np.float32) / np.float32(full_scale(arr.dtype, bit_depth))).clip(0, 1)
    if arr.dtype in (np.int32, np.int64):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"{name}: integer image with values {lo}..{hi} does not fit 16 bits")
        return (arr.astype(np.float32) / np.float32(full_scale(np.dtype(np.uint16), bit_depth))).clip(0, 1)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32, copy=False)
        check_unit_range(out, name)
        return out
    raise ValueError(f"{name}: unsupported image dtype {arr.dtype} (expected uint8, uint16 or float in [0, 1])")


def to_unit_float(arr: np.ndarray, name: str = "image", bit_depth: int | None = None) -> np.ndarray:
    """Convert one grey or RGB(A) image (or crop) to float32 (H, W) in [0, 1] following the module's rules.

    Raises:
        ValueError: float values outside [0, 1] or not finite, unsupported dtype, or not 2-D after colour
            reduction; the message names ``name``.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = _scale_to_unit(arr[..., :3], name, bit_depth)
        return np.ascontiguousarray(rgb @ _LUMA.astype(np.float32), dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D grey or RGB(A) image, got shape {arr.shape}")
    return _scale_to_unit(arr, name, bit_depth)


def read_image(path: str | Path, bit_depth: int | None = None) -> np.ndarray:
    """Read one image file as float32 (H, W) in [0, 1]."""
    return to_unit_float(read_raw(path), str(path), bit_depth)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
