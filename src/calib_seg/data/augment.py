"""Paired augmentations for segmentation: flips, 90-degree rotations, elastic warps, intensity jitter, noise, blur.

Geometric transforms (flips, rotations, the elastic warp) are applied identically to image and mask (the mask is
resampled nearest-neighbour, so it stays binary); intensity jitter, noise and blur touch the image only.
All randomness comes from an explicit ``torch.Generator`` so a (seed, sample index) pair reproduces the same
augmented sample in any worker process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairAugment:
    """Random flips, 90-degree rotations and intensity jitter for an (image, mask) pair.

    Args:
        flip: random horizontal and vertical flips.
        rot90: random multiple of 90 degrees; only applied when the last two dims are equal (a rotated
            non-square patch would change shape and break batching).
        brightness: image += U(-b, b).
        contrast: image = mean + (image - mean) * U(1-c, 1+c).
        gamma: image **= exp(U(-g, g)).
        noise_std: additive Gaussian noise with std U(0, noise_std).
        elastic_alpha: elastic warp: maximum displacement in pixels of a random field on a coarse grid (0 = off).
        elastic_grid: spacing in pixels of that grid (bicubically interpolated to a smooth field).
        elastic_prob: probability of applying the elastic warp to a sample.
        blur_sigma: Gaussian blur of the image with sigma U(0, blur_sigma) pixels (0 = off).
        blur_prob: probability of blurring a sample.

    The image is clamped to [0, 1] afterwards, keeping the project's input contract.
    """

    flip: bool = True
    rot90: bool = True
    brightness: float = 0.05
    contrast: float = 0.1
    gamma: float = 0.1
    noise_std: float = 0.0
    elastic_alpha: float = 0.0
    elastic_grid: int = 32
    elastic_prob: float = 0.5
    blur_sigma: float = 0.0
    blur_prob: float = 0.3

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``image`` and ``mask`` (same spatial shape, ``(..., H, W)``); returns new tensors."""
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in H, W")
        g = generator

        def u(lo: float = 0.0, hi: float = 1.0) -> float:
            return float(lo + (hi - lo) * torch.rand((), generator=g))

        if self.flip:
            if u() < 0.5:
                image, mask = image.flip(-1), mask.flip(-1)
            if u() < 0.5:
                image, mask = image.flip(-2), mask.flip(-2)
        if self.rot90 and image.shape[-1] == image.shape[-2]:
            k = int(torch.randint(0, 4, (), generator=g))
            if k:
                image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
        if self.elastic_alpha > 0 and u() < self.elastic_prob:
            image, mask = elastic_warp(image, mask, self.elastic_alpha, self.elastic_grid, g)
        image = image.clone()
        if self.blur_sigma > 0 and u() < self.blur_prob:
            image = gaussian_blur(image, u(0.0, self.blur_sigma))
        if self.gamma > 0:
            image = image.clamp(0, 1) ** float(torch.exp(torch.tensor(u(-self.gamma, self.gamma))))
        if self.contrast > 0:
            mean = image.mean()
            image = mean + (image - mean) * u(1 - self.contrast, 1 + self.contrast)
        if self.brightness > 0:
            image = image + u(-self.brightness, self.brightness)
        if self.noise_std > 0:
            image = image + torch.randn(image.shape, generator=g, dtype=image.dtype) * u(0, self.noise_std)
        return image.clamp_(0.0, 1.0).contiguous(), mask.contiguous()


def elastic_warp(
    image: torch.Tensor, mask: torch.Tensor, alpha: float, grid: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``image`` (bilinear) and ``mask`` (nearest) ``(..., H, W)`` by one smooth random displacement field.

    The field is uniform in [-alpha, alpha] pixels on a grid of spacing ``grid`` pixels, bicubically interpolated;
    borders reflect. Returns tensors of the input shapes and dtypes.
    """
    h, w = image.shape[-2:]
    gh, gw = max(2, h // max(1, grid) + 1), max(2, w // max(1, grid) + 1)
    coarse = (torch.rand((1, 2, gh, gw), generator=generator) * 2 - 1) * float(alpha)
    disp = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    gx = (xs + disp[0]) / max(w - 1, 1) * 2 - 1
    gy = (ys + disp[1]) / max(h - 1, 1) * 2 - 1
    field = torch.stack([gx, gy], dim=-1)[None]

    def warp(x: torch.Tensor, mode: str) -> torch.Tensor:
        flat = x.reshape(1, -1, h, w).float()
        out = F.grid_sample(flat, field, mode=mode, padding_mode="reflection", align_corners=True)
        return out.reshape(x.shape).to(x.dtype)

    return warp(image, "bilinear"), warp(mask, "nearest")


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``image`` ``(..., H, W)`` with ``sigma`` pixels (reflect borders)."""
    if sigma < 0.3:
        return image
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    h, w = image.shape[-2:]
    flat = image.reshape(-1, 1, h, w).float()
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return flat.reshape(image.shape).to(image.dtype)
