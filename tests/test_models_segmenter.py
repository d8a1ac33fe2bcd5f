"""Learned models: tiny networks in unit tests; the shipped weights on a fresh synthetic stack."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xanestrack.models.nets import DualUNet, UNet  # noqa: E402
from xanestrack.models.segmenter import LearnedSegmenter, SegmenterConfig, default_model_dir, train_segmenter  # noqa: E402


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


def test_train_save_load_round_trip_and_determinism(tmp_path):
    cfg = SegmenterConfig(width=4, depth=2, n_train=24, n_val=8, epochs=1, batch=8)
    train_segmenter(tmp_path / "m", config=cfg, log=lambda *a: None)
    for f in ("config.json", "weights.pt", "card.md"):
        assert (tmp_path / "m" / f).is_file()
    seg = LearnedSegmenter(tmp_path / "m")
    rois = np.random.default_rng(0).normal(0, 0.05, (3, 41, 41)).astype(np.float32)
    a = seg.segment_rois(rois)
    b = LearnedSegmenter(tmp_path / "m").segment_rois(rois)
    assert a.shape == rois.shape and a.dtype == np.float32
    assert np.array_equal(a, b)


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="xanestrack train segmenter"):
        LearnedSegmenter(tmp_path / "nothing")


@pytest.mark.slow
def test_shipped_segmenter_on_a_fresh_stack():
    if not (default_model_dir() / "weights.pt").is_file():
        pytest.skip("no shipped segmenter weights")
    from xanestrack.evaluate import evaluate_result
    from xanestrack.pipeline import run_pipeline
    from xanestrack.stack import Stack
    from xanestrack.synth import make_synthetic_stack

    s = make_synthetic_stack("default", seed=21, n_energies=60, shape=(260, 260), n_particles=4, radius_range=(10.0, 30.0))
    r = run_pipeline(Stack(s.optical_density(), s.energies_ev), segmenter=LearnedSegmenter().segment_rois)
    table, summ = evaluate_result(r, s.truth)
    assert summ["n_found"] == 4
    assert summ["max_rms_px"] < 0.1
    # IoU of the learned masks against the true masks, in the truth's own windows, all frames
    from xanestrack.register import crop_windows, window_half

    od = s.optical_density()
    seg = LearnedSegmenter()
    for i in range(4):
        w = (s.truth.masks[i].shape[1] - 1) // 2
        half = window_half(s.truth.radii[i])
        tm = np.pad(s.truth.masks[i], ((0, 0), (half - w, half - w), (half - w, half - w)))
        win, _, _ = crop_windows(od, s.truth.mask_origins[i] + w, half)
        m = seg.segment_rois(win) > 0.5
        iou = (m & tm).sum() / (m | tm).sum()
        assert iou > 0.9, (i, iou)
