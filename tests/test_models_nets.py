"""Network modules (xanestrack.models.nets): shapes and sizes, a tiny problem learned."""

import pytest

torch = pytest.importorskip("torch")

from xanestrack.models.nets import DualUNet, PatchDiscriminator, ResnetGenerator, UNet  # noqa: E402


def test_generator_and_discriminator_shapes_and_size():
    g = ResnetGenerator(1, 1, width=16, n_blocks=6)
    n = sum(p.numel() for p in g.parameters())
    assert 0.4e6 < n < 0.6e6  # the CPU-sized generator of the issue (~0.5 M)
    x = torch.zeros(2, 1, 64, 92)
    with torch.inference_mode():
        y = g.eval()(x)
    assert y.shape == x.shape and float(y.abs().max()) <= 1.0
    with torch.inference_mode():
        d = PatchDiscriminator(1, width=8)(torch.zeros(2, 1, 128, 128))
    assert d.shape[:2] == (2, 1) and d.shape[-1] < 20  # a map of patch scores


def test_unet_shapes_any_size():
    net = UNet(1, 1, width=4, depth=3).eval()
    for h, w in ((48, 48), (37, 53)):
        assert net(torch.zeros(2, 1, h, w)).shape == (2, 1, h, w)
    d, m = DualUNet(width=4, depth=2)(torch.zeros(1, 1, 32, 32))
    assert d.shape == m.shape == (1, 1, 32, 32)


def test_loss_decreases_on_a_tiny_problem():
    torch.manual_seed(0)
    net = UNet(1, 1, width=4, depth=2)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    target = ((yy - 16) ** 2 + (xx - 14) ** 2 < 64).float()[None, None].repeat(4, 1, 1, 1)
    x = target + 0.3 * torch.randn_like(target)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
