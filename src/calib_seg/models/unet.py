"""Native PyTorch U-Net family for binary segmentation: UNet, AttentionUNet, AttentionResUNet.

All three share one encoder/decoder skeleton and differ only in the convolution block (plain double conv or
residual) and in whether skip connections pass through an additive attention gate (Oktay et al. 2018,
"Attention U-Net: Learning Where to Look for the Pancreas"). They output **one logit channel**; the task applies
the sigmoid, so losses can use the numerically stable logit forms.

Input height and width must be divisible by ``2**depth`` (each level halves the resolution and the decoder must
land back on the skip's exact size). Anything else is refused with a clear ``ValueError``; whole images of other
sizes go through :func:`calib_seg.models.tiling.predict_tiled` or are padded by the task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from calib_seg.models import NORMS, norm_layer

__all__ = ["UNet", "AttentionUNet", "AttentionResUNet", "AttentionGate"]


def _conv(cin: int, cout: int, norm: str, kernel: int = 3) -> nn.Conv2d:
    # A bias right before batch/group norm is cancelled by the norm's mean subtraction: drop it.
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=(norm == "none"))


def _two_convs(cin: int, cout: int, norm: str, dropout: float, final_relu: bool) -> nn.Sequential:
    """conv -> norm -> ReLU -> [dropout] -> conv -> norm [-> ReLU]: the body of both block types."""
    layers = [_conv(cin, cout, norm), norm_layer(norm, cout), nn.ReLU(inplace=True),
              nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), _conv(cout, cout, norm), norm_layer(norm, cout)]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if final_relu else []))


class ConvBlock(nn.Module):
    """Two 3x3 conv -> norm -> ReLU layers (the classic U-Net block), optional dropout in between."""

    def __init__(self, cin: int, cout: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.body = _two_convs(cin, cout, norm, dropout, final_relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResBlock(nn.Module):
    """Residual block: two 3x3 conv -> norm layers plus a 1x1 projection shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.body = _two_convs(cin, cout, norm, dropout, final_relu=False)
        # Channel counts change at every level, so the shortcut always needs a projection.
        self.shortcut = nn.Sequential(_conv(cin, cout, norm, kernel=1), norm_layer(norm, cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018).

    The skip features ``x`` (fine, H x W) are weighted by coefficients alpha in [0, 1] computed from ``x`` and
    the gating signal ``g`` from the next coarser level (H/2 x W/2):
    ``alpha = sigmoid(psi(relu(W_x x + W_g g)))``, with ``W_x`` a stride-2 conv that brings ``x`` to the gating
    resolution (as in the paper), and alpha resampled back to H x W. Returns ``x * alpha``.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int, norm: str = "batch"):
        super().__init__()
        self.theta_x = nn.Conv2d(skip_channels, inter_channels, kernel_size=2, stride=2, bias=False)
        self.phi_g = nn.Conv2d(gate_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)
        # Output projection + norm as in the reference implementation: keeps the gated skip well scaled.
        self.out = nn.Sequential(
            _conv(skip_channels, skip_channels, norm, kernel=1), norm_layer(norm, skip_channels)
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(F.relu(self.theta_x(x) + self.phi_g(g))))
        alpha = F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(x * alpha)


class _UNetBase(nn.Module):
    """Shared encoder/decoder skeleton. Subclasses choose the block type and whether skips are gated."""

    block: type[nn.Module] = ConvBlock
    attention: bool = False

    def __init__(
        self,
        in_channels: int = 1,
        base_filters: int = 16,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if in_channels < 1 or base_filters < 1:
            raise ValueError(f"in_channels and base_filters must be >= 1, got {in_channels}, {base_filters}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.depth = depth
        widths = [base_filters * 2**i for i in range(depth + 1)]  # last one is the bottleneck

        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoders.append(self.block(cin, w, norm, dropout))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = self.block(widths[-2], widths[-1], norm, dropout)

        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            skip_w, coarse_w = widths[level], widths[level + 1]
            self.ups.append(nn.ConvTranspose2d(coarse_w, skip_w, kernel_size=2, stride=2))
            if self.attention:
                self.gates.append(AttentionGate(skip_w, coarse_w, max(skip_w // 2, 1), norm))
            self.decoders.append(self.block(2 * skip_w, skip_w, norm, dropout))
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)

    @property
    def size_divisor(self) -> int:
        """Height and width of inputs must be multiples of this (``2**depth``)."""
        return 2**self.depth

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        d = self.size_divisor
        if h % d or w % d:
            raise ValueError(
                f"{type(self).__name__}(depth={self.depth}) needs H and W divisible by 2**depth = {d}, "
                f"got input size {h}x{w}. Crop/pad to a multiple of {d} or use tiled inference "
                "(calib_seg.models.tiling.predict_tiled)."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, H, W)`` images to ``(B, 1, H, W)`` foreground logits."""
        self._check_input(x)
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for i, (up, dec) in enumerate(zip(self.ups, self.decoders)):
            skip = skips[-1 - i]
            if self.attention:
                # The gate looks at the coarse decoder state *before* upsampling, as in Oktay et al.
                skip = self.gates[i](skip, x)
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class UNet(_UNetBase):
    """Plain U-Net (Ronneberger et al. 2015): double-conv blocks, concatenated skips, one logit out.

    Args:
        in_channels: input image channels (1 for EM).
        base_filters: width of the first level; doubles at every level down.
        depth: number of down-sampling steps; inputs must be divisible by ``2**depth``.
        norm: ``"batch"``, ``"group"`` or ``"none"``.
        dropout: ``Dropout2d`` rate inside each block (0 disables it).
    """

    block = ConvBlock
    attention = False


class AttentionUNet(_UNetBase):
    """U-Net whose skip connections pass through additive attention gates (Oktay et al. 2018).

    Same arguments as :class:`UNet`.
    """

    block = ConvBlock
    attention = True


class AttentionResUNet(_UNetBase):
    """Attention U-Net with residual blocks (projection shortcuts) in encoder, bottleneck and decoder.

    Same arguments as :class:`UNet`.
    """

    block = ResBlock
    attention = True
