"""Whole-image inference for fully convolutional models: overlapping tiles with blend weights, or padding.

EM test slices (768x1024 for EPFL/Lucchi) are larger than training patches and not always divisible by the
model's down-sampling factor. The literature reports Jaccard on whole slices, so we predict whole slices by
tiling with overlap and blending.

Blending: every tile gets a separable weight window that is

* **zero** within ``margin`` pixels of each side that faces a neighbouring tile (those pixels saw zero padding
  instead of real context, so they are the least trustworthy),
* a **cosine ramp** across the rest of the overlap (no visible seams),
* **one** elsewhere, including along the real image border (there the untiled model sees the same border).

Consequence (tested): if the model's receptive-field radius is at most ``margin``, the tiled output equals the
untiled output up to float rounding, because only pixels computed with full context receive weight. For larger
receptive fields it is a smooth approximation, which is the usual trade-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["predict_tiled", "predict_padded", "size_divisor", "tile_starts", "blend_window_1d"]


def size_divisor(model: nn.Module) -> int:
    """Multiple that input H and W must have for ``model`` (1 if the model does not say)."""
    d = getattr(model, "size_divisor", None)
    if d is None:
        # smp models built outside our factory still carry their encoder's output stride.
        encoder = getattr(model, "encoder", None)
        d = (
            getattr(encoder, "output_stride", 1)
            if getattr(model, "requires_divisible_input_shape", False)
            else 1
        )
    return int(d)


def _pair(v: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` (>= tile) with at least ``overlap`` overlap.

    Tiles step by ``tile - overlap`` rounded down to a multiple of ``align``; the last tile is shifted back to
    end exactly at ``length`` (so it may overlap its neighbour more than ``overlap``) instead of padding the
    image further. With ``length`` and ``tile`` multiples of ``align``, every start is a multiple of ``align``.
    """
    if length < tile:
        raise ValueError(f"length {length} is smaller than the tile {tile}; pad first")
    step = max((tile - overlap) // align * align, align)
    if step > tile - overlap:
        raise ValueError(
            f"tile {tile} - overlap {overlap} leaves no step that is a multiple of align={align}"
        )
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def blend_window_1d(tile: int, overlap: int, margin: int, left: bool, right: bool) -> torch.Tensor:
    """1-D blend weights for one tile axis; ``left``/``right`` say whether a neighbouring tile lies that side."""
    w = torch.ones(tile, dtype=torch.float64)
    ramp_len = overlap - 2 * margin
    # Strictly inside (0, 1) so every ramp pixel contributes; cosine for a smooth (C1) transition.
    ramp = 0.5 - 0.5 * torch.cos(
        math.pi * (torch.arange(ramp_len, dtype=torch.float64) + 0.5) / max(ramp_len, 1)
    )
    if left:
        w[:margin] = 0.0
        w[margin : margin + ramp_len] = ramp
    if right:
        w[tile - margin :] = 0.0
        w[tile - margin - ramp_len : tile - margin] = torch.minimum(
            w[tile - margin - ramp_len : tile - margin], ramp.flip(0)
        )
    return w


def _pad_bottom_right(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    if ph == 0 and pw == 0:
        return x
    # Reflection keeps image statistics near the border; it needs the pad to be smaller than the size.
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _as_4d(image: torch.Tensor) -> tuple[torch.Tensor, int]:
    if image.ndim == 2:
        return image[None, None], 2
    if image.ndim == 3:
        return image[None], 3
    if image.ndim == 4:
        return image, 4
    raise ValueError(f"image must have shape (H,W), (C,H,W) or (N,C,H,W), got {tuple(image.shape)}")


def _restore_dims(out: torch.Tensor, ndim: int) -> torch.Tensor:
    if ndim == 2:
        return out[0, 0] if out.shape[1] == 1 else out[0]
    if ndim == 3:
        return out[0]
    return out


@torch.no_grad()
def predict_padded(
    fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, divisor: int
) -> torch.Tensor:
    """Run ``fn`` on the whole image at once, reflect-padding H and W up to multiples of ``divisor``.

    Returns ``fn``'s output cropped back to the input's H x W (same number of dims as ``image``).
    """
    x, ndim = _as_4d(image)
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    out = fn(_pad_bottom_right(x, ph, pw))[..., :h, :w]
    return _restore_dims(out, ndim)


@torch.no_grad()
def predict_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int | tuple[int, int] = 256,
    overlap: int | tuple[int, int] = 32,
    batch_size: int = 4,
    margin: int | tuple[int, int] | None = None,
    align: int = 1,
) -> torch.Tensor:
    """Tiled whole-image inference with overlapping, blended tiles.

    Args:
        fn: maps a batch ``(b, C, tile_h, tile_w)`` to ``(b, K, tile_h, tile_w)`` (logits or probabilities;
            blending is linear, so it returns the same kind). Runs under ``torch.no_grad``.
        image: ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)`` on any device; tiles are made on that device.
        tile: tile size (int or (h, w)); must suit ``fn`` (e.g. divisible by the model's ``size_divisor``).
        overlap: minimum overlap between neighbouring tiles (int or pair), ``0 <= overlap < tile``.
        batch_size: tiles per call of ``fn`` (memory vs. speed).
        margin: pixels discarded (zero weight) at each tile side facing a neighbour; default ``overlap // 4``.
            Must satisfy ``2 * margin <= overlap``. Tiled output is exact when the receptive-field radius <= margin.
        align: tile offsets are multiples of this (pass the model's ``size_divisor``). Down-sampling networks
            are only shift-equivariant for shifts that are multiples of their total stride, so aligned tiles
            see the same pooling grid as the untiled image. The image is reflect-padded to a multiple of
            ``align`` (and to at least one tile); ``tile`` must be a multiple of ``align``.

    Returns:
        Tensor with the input's spatial shape and number of dims, ``K`` channels (accumulated in at least
        float32, cast back to ``fn``'s output dtype). Images smaller than a tile are padded (reflect) and cropped back.
    """
    th, tw = _pair(tile, "tile")
    oh, ow = _pair(overlap, "overlap")
    mh, mw = _pair(margin, "margin") if margin is not None else (oh // 4, ow // 4)
    if th < 1 or tw < 1:
        raise ValueError(f"tile must be positive, got {(th, tw)}")
    if not (0 <= oh < th and 0 <= ow < tw):
        raise ValueError(f"overlap must satisfy 0 <= overlap < tile, got overlap={(oh, ow)}, tile={(th, tw)}")
    if not (0 <= 2 * mh <= oh and 0 <= 2 * mw <= ow):
        raise ValueError(
            f"margin must satisfy 0 <= 2*margin <= overlap, got margin={(mh, mw)}, overlap={(oh, ow)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if align < 1 or th % align or tw % align:
        raise ValueError(f"tile {(th, tw)} must be a multiple of align={align} (the model's size divisor)")

    x, ndim = _as_4d(image)
    n, _, h, w = x.shape
    x = _pad_bottom_right(x, max(th - h, (-h) % align), max(tw - w, (-w) % align))
    hp, wp = x.shape[-2:]
    ys, xs = tile_starts(hp, th, oh, align), tile_starts(wp, tw, ow, align)

    # Weight windows depend only on the tile position, so build them once per (row, col) position.
    wy = {y: blend_window_1d(th, oh, mh, left=y > 0, right=y + th < hp) for y in ys}
    wx = {c: blend_window_1d(tw, ow, mw, left=c > 0, right=c + tw < wp) for c in xs}
    jobs = [(i, y, c) for i in range(n) for y in ys for c in xs]

    out = None
    wsum = torch.zeros((1, 1, hp, wp), dtype=torch.float64, device=x.device)
    for y in ys:
        for c in xs:
            wsum[..., y : y + th, c : c + tw] += torch.outer(wy[y], wx[c]).to(wsum)
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b : b + batch_size]
        pred = fn(torch.stack([x[i, :, y : y + th, c : c + tw] for i, y, c in chunk]))
        if pred.ndim != 4 or pred.shape[-2:] != (th, tw):
            raise ValueError(f"fn must return (b, K, {th}, {tw}) for a tile batch, got {tuple(pred.shape)}")
        if out is None:
            # Accumulate in at least float32 so half-precision tiles do not lose the blend sums.
            out_dtype = pred.dtype
            out = torch.zeros(
                (n, pred.shape[1], hp, wp),
                dtype=torch.promote_types(out_dtype, torch.float32),
                device=x.device,
            )
            wsum = wsum.to(out.dtype)
        for k, (i, y, c) in enumerate(chunk):
            win = torch.outer(wy[y], wx[c]).to(out)
            out[i, :, y : y + th, c : c + tw] += pred[k].to(out.dtype) * win
    # Every pixel has weight from at least one tile by construction (see blend_window_1d); guard anyway.
    if not bool((wsum > 0).all()):
        raise RuntimeError("internal error: some pixels received no tile weight")
    out = (out / wsum)[..., :h, :w].to(out_dtype)
    return _restore_dims(out, ndim)
