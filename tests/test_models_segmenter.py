"""The learned segmenter (Dual U-Net): tiny networks in unit tests; the shipped weights on a fresh synthetic stack."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xanestrack.models.segmenter import LearnedSegmenter, SegmenterConfig, default_model_dir, train_segmenter  # noqa: E402


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


def test_stress_rois_carry_the_particles_own_outline_and_no_clean_image(tmp_path):
    """Domain randomisation: ROIs cut from stress-family scans have the particle's own
    outline as target and no noise-free image (NaN: no denoising loss); a model trained on
    them fine-tunes from another folder and records it."""
    import json

    from xanestrack.models.segmenter import make_training_rois

    x, c, m = make_training_rois(12, seed=3, canvas=64, stress_fraction=1.0)
    assert x.shape == c.shape == m.shape == (12, 1, 64, 64)
    assert np.isnan(c).all() and np.isfinite(x).all()
    # binary at pixel centres (binned ROIs: block means of 0/1), the particle at the centre
    assert m.min() == 0 and m.max() == 1
    assert (m[:, 0, 28:36, 28:36].mean(axis=(1, 2)) > 0.5).all()
    _, c0, _ = make_training_rois(4, seed=3, canvas=64, stress_fraction=0.0)
    assert np.isfinite(c0).all()
    cfg = SegmenterConfig(width=4, depth=2, n_train=16, n_val=8, epochs=1, batch=8, stress_fraction=0.5)
    train_segmenter(tmp_path / "a", config=cfg, log=lambda *a: None)
    logs = []
    train_segmenter(tmp_path / "b", config=cfg, init_dir=tmp_path / "a", log=logs.append)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["fine_tuned_from"] == str(tmp_path / "a")
    assert "fine-tuned from" in (tmp_path / "b" / "card.md").read_text()
    assert "nan" not in logs[-1].split("loss")[1].split(",")[0]


def test_centre_jitter_cuts_training_rois_off_their_particles_centre():
    """``centre_jitter``: the targets' centres of mass spread away from the ROI's centre (the
    shipped recipe, 0, keeps them within a couple of pixels)."""
    from scipy import ndimage

    from xanestrack.models.segmenter import make_training_rois

    def offsets(jitter):
        _, _, m = make_training_rois(24, seed=4, canvas=64, centre_jitter=jitter)
        com = np.array([ndimage.center_of_mass(a[0]) for a in m])
        return np.hypot(*(com - 31.5).T)

    plain, cut = offsets(0.0), offsets(0.3)
    assert np.median(cut) > 2 * np.median(plain) and np.max(cut) > 3.0


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

    s = make_synthetic_stack(
        "default", seed=21, n_energies=60, shape=(260, 260), n_particles=4, radius_range=(10.0, 30.0)
    )
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


def test_every_config_field_is_documented():
    from conftest import undocumented_fields

    assert undocumented_fields(SegmenterConfig) == []


def test_segmenter_is_thread_safe_and_pickles():
    """Called from several threads (one batch through the network at a time) and pickled (as a Dask
    worker may receive it), the segmenter gives the same masks as one call."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    seg = LearnedSegmenter()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    rois = np.stack([(np.hypot(yy - 24, xx - 24) < 10 + k).astype(np.float32) for k in range(4)])
    rois = rois + rng.normal(0, 0.05, rois.shape).astype(np.float32)
    one = seg.segment_rois(rois)
    with ThreadPoolExecutor(4) as ex:
        many = list(ex.map(lambda k: seg.segment_rois(rois[k : k + 1])[0], range(4)))
    np.testing.assert_allclose(np.stack(many), one, atol=1e-5)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(seg)).segment_rois(rois), one, atol=1e-6)


def test_keep_central_in_blocks_of_rois_in_place_gives_the_same():
    """The learned masks' central component is kept block by block of ROIs, in place (a large particle's long stack
    was labelled whole and copied): the same masks, ROIs with several components, one and none included."""
    from xanestrack.models.segmenter import _keep_central_stack

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    p = np.zeros((9, 40, 40), np.float32)
    for k in range(9):
        for _ in range(k % 4):  # 0, 1, 2 or 3 blobs
            cy, cx, r = rng.uniform(5, 35), rng.uniform(5, 35), rng.uniform(2, 8)
            p[k] = np.maximum(p[k], np.clip(r - np.hypot(yy - cy, xx - cx), 0, 1))
    whole = _keep_central_stack(p.copy())
    q = p.copy()
    blocks = _keep_central_stack(q, block_px=2 * 40 * 40)
    assert blocks is q and np.array_equal(whole, blocks)
    assert (whole[0] == 0).all() and not np.array_equal(whole, p)  # something was cut off
