"""Network modules (PyTorch). Imported only by the learned models, never at package import."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet", "DualUNet", "ResnetGenerator", "PatchDiscriminator"]


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


class _ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch),
        )

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Cycle-GAN generator (Zhu et al. 2017, after Johnson et al.), sized for a CPU.

    c7s1-w, d2w, d4w, ``n_blocks`` residual blocks at 4w, up 2w, up w, c7s1-1, tanh.
    Width 16 with 6 blocks has about 0.49 M parameters (the reference, width 64 and 9
    blocks, 11 M). Up-sampling is nearest-neighbour + convolution (no checkerboard).
    Input sides must be multiples of 4.
    """

    def __init__(self, cin: int = 1, cout: int = 1, width: int = 16, n_blocks: int = 6):
        super().__init__()
        w = width
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(cin, w, 7), nn.InstanceNorm2d(w), nn.ReLU(inplace=True)]
        for m in (1, 2):
            layers += [
                nn.Conv2d(w * m, w * 2 * m, 3, stride=2, padding=1),
                nn.InstanceNorm2d(w * 2 * m),
                nn.ReLU(inplace=True),
            ]
        layers += [_ResBlock(4 * w) for _ in range(n_blocks)]
        for m in (4, 2):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(w * m, w * m // 2, 3, padding=1),
                nn.InstanceNorm2d(w * m // 2),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, cout, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (70 x 70 receptive field), base width ``width``.

    Outputs a map of real/fake scores (no sigmoid: least-squares GAN loss).
    """

    def __init__(self, cin: int = 1, width: int = 16):
        super().__init__()
        w = width
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.net = nn.Sequential(
            nn.Conv2d(cin, w, 4, stride=2, padding=1),
            act(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.InstanceNorm2d(2 * w),
            act(),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1),
            nn.InstanceNorm2d(4 * w),
            act(),
            nn.Conv2d(4 * w, 8 * w, 4, stride=1, padding=1),
            nn.InstanceNorm2d(8 * w),
            act(),
            nn.Conv2d(8 * w, 1, 4, stride=1, padding=1),
        )

    def forward(self, x):
        return self.net(x)
