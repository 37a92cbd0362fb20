"""Factory for segmentation-models-pytorch (smp) architectures, configured from Hydra.

``encoder_weights`` defaults to ``None``: training jobs on clusters often have no network, and a silent download
at start-up would make runs depend on whatever a remote server returns that day. Pretrained weights must be asked
for explicitly (``encoder_weights: imagenet`` *and* ``allow_download: true``).
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

__all__ = ["build_smp", "available_architectures"]


def available_architectures() -> list[str]:
    """Names of the smp architectures this installation provides (class names, e.g. ``"Unet"``, ``"FPN"``)."""
    return sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())


def build_smp(
    arch: str = "Unet",
    encoder_name: str = "resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 1,
    classes: int = 1,
    allow_download: bool = False,
    **kw: Any,
) -> nn.Module:
    """Build any smp architecture/encoder that outputs ``classes`` logit channels (no activation).

    Args:
        arch: smp architecture, case-insensitive (``"Unet"``, ``"UnetPlusPlus"``, ``"FPN"``, ``"DeepLabV3Plus"``...).
        encoder_name: smp encoder (``"resnet18"``, ``"efficientnet-b0"``, ``"tu-<timm name>"``...).
        encoder_weights: ``None`` (random init, default) or a pretrained weight name such as ``"imagenet"``.
        in_channels: input channels (1 for grey EM images).
        classes: output channels; 1 for binary segmentation logits.
        allow_download: must be ``True`` to use ``encoder_weights`` (which may fetch files from the network).
        **kw: passed to the architecture (e.g. ``decoder_channels``, ``encoder_depth``).

    Returns:
        The model, with an extra ``size_divisor`` attribute: input H and W must be multiples of it.

    Raises:
        ValueError: unknown architecture or encoder, or pretrained weights requested without ``allow_download``.
    """
    key = str(arch).lower()
    if key not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ValueError(
            f"Unknown smp architecture {arch!r}. Available: {', '.join(available_architectures())}"
        )
    if encoder_weights is not None and not allow_download:
        raise ValueError(
            f"encoder_weights={encoder_weights!r} may download files at run time, which this project forbids by "
            "default. Use encoder_weights=null, or pre-fetch the weights and set allow_download=true explicitly."
        )
    if not str(encoder_name).startswith("tu-") and encoder_name not in smp.encoders.get_encoder_names():
        names = smp.encoders.get_encoder_names()
        raise ValueError(
            f"Unknown smp encoder {encoder_name!r}. {len(names)} native encoders are available, e.g. "
            f"{', '.join(names[:12])}, ... (full list: segmentation_models_pytorch.encoders.get_encoder_names()); "
            "timm encoders are named 'tu-<timm model name>'."
        )
    model = smp.MODEL_ARCHITECTURES_MAPPING[key](
        encoder_name=encoder_name,
        encoder_weights=encoder_weights,
        in_channels=in_channels,
        classes=classes,
        **kw,
    )
    # smp refuses inputs not divisible by the encoder's output stride; expose it so the task can pad or tile.
    divisible = getattr(model, "requires_divisible_input_shape", True)
    model.size_divisor = int(model.encoder.output_stride) if divisible else 1
    return model
