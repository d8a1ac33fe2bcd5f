"""Network modules (PyTorch). Imported only by the learned models, never at package import."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet", "DualUNet"]


def _block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net: ``depth`` down-samplings (stride 2), bilinear up-sampling, skip connections."""

    def __init__(self, cin: int = 1, cout: int = 1, width: int = 16, depth: int = 4):
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(cin, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(depth)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList([_block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chans[0], cout, 1)
        self.depth = depth

    def forward(self, x):
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for blk in self.up:
            s = skips.pop()
            x = nn.functional.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = blk(torch.cat([x, s], dim=1))
        return self.head(x)


class DualUNet(nn.Module):
    """Two U-Nets in series (Su et al. 2024): denoise/remove background, then the mask.

    ``forward`` returns ``(denoised, mask_logits)``; the mask network sees the denoised
    ROI and the input ROI.
    """

    def __init__(self, width: int = 16, depth: int = 4):
        super().__init__()
        self.denoise = UNet(1, 1, width, depth)
        self.contour = UNet(2, 1, width, depth)

    def forward(self, x):
        d = self.denoise(x)
        return d, self.contour(torch.cat([d, x], dim=1))
