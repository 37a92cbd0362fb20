"""Paired augmentations for segmentation: flips, 90-degree rotations, mild intensity jitter.

Geometric transforms are applied identically to image and mask; intensity jitter touches the image only.
All randomness comes from an explicit ``torch.Generator`` so a (seed, sample index) pair reproduces the same
augmented sample in any worker process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    The image is clamped to [0, 1] afterwards, keeping the project's input contract.
    """

    flip: bool = True
    rot90: bool = True
    brightness: float = 0.05
    contrast: float = 0.1
    gamma: float = 0.1
    noise_std: float = 0.0

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
        image = image.clone()
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
