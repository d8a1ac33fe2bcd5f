"""The learned ROI segmenter (Dual U-Net): training data, training, predictor.

Training data are generated here: ROIs cut from synthetic scans (default and hard
presets, noise from 600 to 8000 counts, every energy, so faint pre-edge frames and
neighbours cut by the ROI border are included) around the true position plus a
detection-like error, with two targets known exactly from the forward model: the
particle's own noise- and background-free OD (for the denoising network) and its
partial-pixel coverage (for the mask network). Seeds 1-99 are never used for
training (they are the evaluation seeds of the benchmarks and tests).

A model is a folder: ``config.json``, ``weights.pt`` (state dict, loaded with
``weights_only=True``) and ``card.md`` (how it was trained, validation scores).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import XanestrackError
from ..morph import dilate_cross, frame_blocks, label_stats
from ..register import RESAMPLE_BLOCK_PX, bin_frames, centre_of_mass
from .loading import check_model_size, load_state, load_weights, read_model_config

__all__ = ["SegmenterConfig", "make_training_rois", "train_segmenter", "LearnedSegmenter", "default_model_dir"]

CANVAS = 64


def default_model_dir() -> Path:
    return Path(__file__).resolve().parent / "segmenter"


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture and training of the Dual U-Net segmenter (:func:`train_segmenter`).

    Written into the model's ``config.json``; ``width``, ``depth`` and ``canvas`` are read
    back by :class:`LearnedSegmenter`.

    Attributes
    ----------
    width : int, default 8
        Channels of each U-Net's first level (doubled at every level down).
    depth : int, default 4
        Down-samplings of each U-Net.
    canvas : int, default 64
        px. Side of the square the ROIs are padded to (larger ROIs are binned to fit).
    n_train : int, default 6000
        Training ROIs, cut from synthetic scans (seeds >= 100 only).
    n_val : int, default 400
        Validation ROIs from unseen synthetic scans (IoU, centre-of-mass error).
    stress_fraction : float, default 0.0
        Share of the scans the ROIs are cut from that come from the second scene model,
        the stress family with randomised knobs (domain randomisation, see
        :func:`~xanestrack.synth_stress.randomised_stress_stack`); the rest from
        :mod:`xanestrack.synth`. 0 (the shipped segmenter's recipe): the first scene model
        only. Measured (the shipped model fine-tuned at 0.5, 4 epochs): IoU on stress ROIs
        0.82 -> 0.93, but its centres of mass agree with the edge estimate in frames where
        both are off by > 1 px (18 such frames vouched for over the stress cases, against 1):
        not shipped (README, Learned models).
    centre_jitter : float, default 0.0
        Each training ROI is cut around the particle's true position moved by 1.5 px (sd)
        and, with this, by up to ``centre_jitter`` x its radius (uniform, per axis): a
        segmenter that has seen its particles off-centre has less reason to lean to its
        window's centre where the image is ambiguous (the pipeline cuts the windows around
        the edge estimate, whose centre of mass must vouch for it). 0: the shipped recipe.
    epochs : int, default 12
        Passes over the training ROIs.
    batch : int, default 16
        ROIs per optimisation step.
    lr : float, default 2e-3
        Peak learning rate of Adam with a one-cycle schedule.
    seed : int, default 0
        Seed of the training data, the initial weights and the batches.
    """

    width: int = 8
    depth: int = 4
    canvas: int = CANVAS
    n_train: int = 6000
    n_val: int = 400
    stress_fraction: float = 0.0
    centre_jitter: float = 0.0
    epochs: int = 12
    batch: int = 16
    lr: float = 2e-3
    seed: int = 0


def normalise_roi(roi):
    """(roi - ring median) / robust peak; returns (normalised, offset, scale)."""
    x, off, scale = normalise_rois(np.asarray(roi)[None], return_scale=True)
    return x[0], float(off[0]), float(scale[0])


def _pad(a, size, value=None):
    h, w = a.shape
    py, px = size - h, size - w
    t, left = py // 2, px // 2
    if value is None:
        return np.pad(a, ((t, py - t), (left, px - left)), mode="edge"), (t, left)
    return np.pad(a, ((t, py - t), (left, px - left)), constant_values=value), (t, left)


def make_training_rois(
    n: int,
    *,
    seed: int,
    canvas: int = CANVAS,
    stress_fraction: float = 0.0,
    centre_jitter: float = 0.0,
    progress=None,
):
    """``n`` ROIs with targets: arrays (n, 1, canvas, canvas) x, clean, coverage.

    ``stress_fraction`` of the scans they are cut from come from the stress family with
    randomised knobs (:func:`~xanestrack.synth_stress.randomised_stress_stack`); its truth
    has the particle's own outline (binary at pixel centres) but no noise-free image: the
    clean target is NaN there (no denoising loss).
    """
    from ..register import crop_windows, window_half
    from ..synth import make_synthetic_stack
    from ..synth_stress import randomised_stress_stack

    rng = np.random.default_rng([seed, 11])
    X, C, M = [], [], []
    k_stack = 0
    while len(X) < n:
        stack_seed = 100 + seed * 1000 + k_stack
        if stress_fraction > 0 and rng.random() < stress_fraction:
            s = randomised_stress_stack(rng, stack_seed, 48, store_frame_masks=False)
            clean = None
        else:
            preset = "hard" if k_stack % 2 else "default"
            counts = float(np.exp(rng.uniform(np.log(600), np.log(8000))))
            s = make_synthetic_stack(preset, seed=stack_seed, store_clean=True, counts=counts)
            clean = s.truth.clean
        k_stack += 1
        od = s.optical_density()
        tp = s.truth.positions
        n_here = min(n - len(X), 320)
        for _ in range(n_here):
            i = int(rng.integers(len(s.truth.radii)))
            k = int(rng.integers(od.shape[0]))
            row = tp[(tp.particle == i) & (tp.frame == k)].iloc[0]
            r = s.truth.radii[i] * rng.uniform(0.9, 1.1)
            half = window_half(r)
            centre = np.array([row.y, row.x]) + rng.normal(0, 1.5, 2)
            if centre_jitter > 0:
                centre = centre + rng.uniform(-centre_jitter, centre_jitter, 2) * s.truth.radii[i]
            win, orig, _ = crop_windows(od[k : k + 1], centre[None], half)
            roi = win[0]
            if not np.all(np.isfinite(roi)):
                continue
            # the stress family has no noise-free image: its clean target stays NaN
            tgt_c = np.zeros_like(roi) if clean is not None else np.full_like(roi, np.nan)
            tgt_m = np.zeros_like(roi)
            mo = s.truth.mask_origins[i][k]
            cov = (s.truth.coverage if clean is not None else s.truth.masks)[i][k].astype(np.float32)
            dy, dx = mo[0] - orig[0][0], mo[1] - orig[0][1]
            hh, ww = cov.shape
            ys, xs = max(dy, 0), max(dx, 0)
            ye, xe = min(dy + hh, roi.shape[0]), min(dx + ww, roi.shape[1])
            tgt_m[ys:ye, xs:xe] = cov[ys - dy : ye - dy, xs - dx : xe - dx]
            if clean is not None:
                tgt_c[ys:ye, xs:xe] = clean[i][k][ys - dy : ye - dy, xs - dx : xe - dx]
            # ROIs larger than the canvas are binned, as at inference
            f = int(np.ceil(roi.shape[0] / canvas))
            roi, tgt_c, tgt_m = (bin_frames(a, f) for a in (roi, tgt_c, tgt_m))
            x, off, scale = normalise_roi(roi)
            X.append(_pad(x, canvas)[0])
            C.append(_pad(tgt_c / scale, canvas, 0.0 if clean is not None else np.nan)[0])
            M.append(_pad(tgt_m, canvas, 0.0)[0])
            if progress:
                progress(len(X), n)
    f = lambda a: np.stack(a)[:, None].astype(np.float32)  # noqa: E731
    return f(X), f(C), f(M)


def validation_scores(model, x, cover):
    """IoU (mask > 0.5 vs coverage >= 0.5), centre-of-mass error (px) against the coverage."""
    import torch

    model.eval()
    with torch.inference_mode():
        preds = []
        for i in range(0, len(x), 32):
            _, m = model(torch.from_numpy(x[i : i + 32]))
            preds.append(torch.sigmoid(m).numpy())
    p = np.concatenate(preds)[:, 0]
    t = cover[:, 0]
    inter = ((p > 0.5) & (t >= 0.5)).sum(axis=(1, 2))
    union = ((p > 0.5) | (t >= 0.5)).sum(axis=(1, 2))
    iou = inter / np.maximum(union, 1)
    err = np.hypot(*(centre_of_mass(p) - centre_of_mass(t)).T)
    return dict(
        iou_mean=float(iou.mean()),
        iou_min=float(iou.min()),
        com_error_px_median=float(np.nanmedian(err)),
        com_error_px_p90=float(np.nanpercentile(err, 90)),
    )


def train_segmenter(
    out_dir, *, config: SegmenterConfig = SegmenterConfig(), init_dir=None, progress=None, log=print
) -> dict:
    """Train the Dual U-Net on generated ROIs and write the model folder. Returns the scores.

    ``init_dir``: a model folder to start from (fine-tuning); its width, depth and canvas
    replace those of ``config``.
    """
    import torch

    from .nets import DualUNet

    if init_dir is not None:
        base = read_model_config(init_dir, kind="segmenter", required=("width", "depth"))
        config = replace(config, **{k: base[k] for k in ("width", "depth", "canvas") if k in base})
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    mix = dict(canvas=config.canvas, stress_fraction=config.stress_fraction, centre_jitter=config.centre_jitter)
    x, c, m = make_training_rois(config.n_train, seed=config.seed, **mix)
    xv, cv, mv = make_training_rois(config.n_val, seed=config.seed + 500, **mix)
    t_data = time.perf_counter() - t0
    log(f"training data: {len(x)} ROIs, validation {len(xv)} ROIs ({t_data:.0f} s)")
    model = DualUNet(config.width, config.depth)
    if init_dir is not None:
        model.load_state_dict(load_weights(init_dir, kind="segmenter"))
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * int(np.ceil(len(x) / config.batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    bce = torch.nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(config.seed)
    history = []
    X, C, M = map(torch.from_numpy, (x, c, m))
    for ep in range(config.epochs):
        model.train()
        perm = torch.randperm(len(X), generator=g)
        tot = 0.0
        te = time.perf_counter()
        for b in range(0, len(X), config.batch):
            idx = perm[b : b + config.batch]
            xb, cb, mb = X[idx], C[idx], M[idx]
            k = int(torch.randint(0, 8, (1,), generator=g))  # the 8 symmetries of the square
            if k & 1:
                xb, cb, mb = xb.flip(-1), cb.flip(-1), mb.flip(-1)
            if k & 2:
                xb, cb, mb = xb.flip(-2), cb.flip(-2), mb.flip(-2)
            if k & 4:
                xb, cb, mb = xb.transpose(-1, -2), cb.transpose(-1, -2), mb.transpose(-1, -2)
            d, ml = model(xb)
            p = torch.sigmoid(ml)
            dice = 1 - (2 * (p * mb).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + mb.sum((1, 2, 3)) + 1)
            # the stress family's ROIs have no noise-free image (NaN): no denoising loss there
            fin = torch.isfinite(cb)
            l1 = (d - torch.nan_to_num(cb)).abs()[fin].mean() if bool(fin.any()) else d.sum() * 0.0
            loss = l1 + bce(ml, mb) + 0.5 * dice.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        sc = validation_scores(model, xv, mv)
        history.append(dict(epoch=ep + 1, loss=tot / len(X), seconds=time.perf_counter() - te, **sc))
        log(
            f"epoch {ep + 1}/{config.epochs}: loss {tot / len(X):.4f}, val IoU {sc['iou_mean']:.4f}, CoM error median {sc['com_error_px_median']:.3f} px ({time.perf_counter() - te:.0f} s)"
        )
        if progress:
            progress(ep + 1, config.epochs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights.pt")
    cfg = dict(
        asdict(config),
        architecture="DualUNet",
        n_params=n_params,
        normalisation="(roi - median of 3-px ring) / 99th percentile",
        fine_tuned_from=str(init_dir) if init_dir else None,
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    final = history[-1]
    from ..synth_stress import RANDOMISED_RANGES

    mix_text = (
        f"about {100 * config.stress_fraction:.0f} % stress-family scans (`xanestrack.synth_stress`: "
        f"{RANDOMISED_RANGES}; the target the particle's own outline at pixel centres) and the rest "
        if config.stress_fraction > 0
        else ""
    )
    jitter_text = f" and up to {config.centre_jitter} radii" if config.centre_jitter > 0 else ""
    if init_dir is not None:
        mix_text = f"(fine-tuned from `{init_dir}`, whose card is that model's training) " + mix_text
    card = (
        f"""# Dual U-Net ROI segmenter

Two U-Nets in series (denoise / background removal, then the particle's partial-coverage mask),
{n_params} parameters (width {config.width}, depth {config.depth}), trained by `xanestrack train segmenter`
(seed {config.seed}) on {config.n_train} ROIs cut from {mix_text}`xanestrack.synth` scans (default and hard presets,
600-8000 counts, all energies; synthetic seeds >= 100 only; ROIs cut 1.5 px (sd){jitter_text} off their particle's
centre), {config.epochs} epochs, Adam with one-cycle
learning rate {config.lr}, batch {config.batch}, loss L1(denoised; not on stress ROIs) + BCE(mask) + 0.5 soft Dice, the 8
symmetries of the square as augmentation. Training time {sum(h["seconds"] for h in history):.0f} s on the CPU
(+ {t_data:.0f} s to generate the data).

Validation ({config.n_val} ROIs from unseen synthetic seeds): IoU {final["iou_mean"]:.4f} (min {final["iou_min"]:.3f}),
centre-of-mass error against the true coverage: median {final["com_error_px_median"]:.3f} px,
90th percentile {final["com_error_px_p90"]:.3f} px (pixels of the {config.canvas}-px canvas: larger ROIs are binned to fit it).

No real data were used for training.

| epoch | loss | val IoU | CoM error median px | s |
|---|---|---|---|---|
"""
        + "\n".join(
            f"| {h['epoch']} | {h['loss']:.4f} | {h['iou_mean']:.4f} | {h['com_error_px_median']:.3f} | {h['seconds']:.0f} |"
            for h in history
        )
        + "\n"
    )
    (out / "card.md").write_text(card)
    return dict(history=history, n_params=n_params)


class LearnedSegmenter:
    """Numpy in, numpy out: ROIs (n, h, w) -> soft masks (n, h, w), eval mode.

    ``device``: "cpu" (the default) or "cuda[:N]" (the network on that GPU; ROIs go there
    and masks come back as numpy arrays). ``precision`` "auto": bfloat16 where the device
    runs it natively.
    """

    def __init__(self, model_dir=None, *, precision: str = "auto", device: str = "cpu"):
        import torch

        from .loading import torch_device
        from .nets import DualUNet

        d = Path(model_dir) if model_dir else default_model_dir()
        if not (d / "weights.pt").is_file():
            raise XanestrackError(f"no trained segmenter in {d}: run 'xanestrack train segmenter' first")
        self.config = read_model_config(d, kind="segmenter", required=("width", "depth", "canvas"))
        build = lambda: DualUNet(self.config["width"], self.config["depth"])  # noqa: E731
        check_model_size(build, path=d / "config.json", kind="segmenter")
        state = load_weights(d, kind="segmenter")
        self.model = build()
        load_state(self.model, state, path=d / "weights.pt", kind="segmenter")
        self.model.eval()
        _fold_batchnorm(self.model)
        self.device = torch_device(device)
        # channels-last halves CPU inference time with the same fp32 arithmetic
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        if precision == "auto":
            # bf16 measured 1.8x faster at equal registration accuracy, where the CPU has it natively
            precision = "bf16" if bf16_supported(self.device) else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision
        self.canvas = int(self.config["canvas"])
        # one batch through the network at a time when callers segment from several threads
        # (the pipeline locates particles one at a time; a user's own threads may not): each
        # batch's activations are a run's largest arrays, and torch uses every core for one
        # batch already
        self._lock = threading.Lock()

    def __getstate__(self):  # a lock does not pickle (a Dask worker gets its own)
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def segment_rois(self, rois) -> np.ndarray:
        import torch

        rois = np.asarray(rois, np.float32)
        if rois.ndim != 3:
            raise ValueError(f"rois must be (n, h, w), got shape {rois.shape}")
        n, h, w = rois.shape
        if n == 0:
            return np.zeros(rois.shape, np.float32)
        f = int(np.ceil(max(h, w) / self.canvas))  # large ROIs: predict on a binned copy
        # the network was trained on ROIs padded to its canvas: predict in that same context
        size = max(self.canvas, int(np.ceil(max(int(np.ceil(h / f)), int(np.ceil(w / f))) / 16) * 16))
        x = normalise_rois(bin_frames(rois, f))
        rh, rw = x.shape[1:]
        t, left = (size - rh) // 2, (size - rw) // 2
        batch = np.pad(x, ((0, 0), (t, size - rh - t), (left, size - rw - left)), mode="edge")[:, None]
        step = 64 if self.device.type == "cpu" else 1024  # a GPU wants large batches
        # the probabilities written into the result batch by batch, the rows/columns the binning dropped given edge
        # values there: a list of batches, their concatenation and its padding were three copies of a large
        # particle's window stack at once (307 px windows, 143 frames: 51 MiB each)
        p = np.empty((n, h, w), np.float32)
        with (
            self._lock,
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"),
        ):
            for i in range(0, n, step):
                xb = torch.from_numpy(np.ascontiguousarray(batch[i : i + step]))
                xb = xb.to(self.device, memory_format=torch.channels_last)
                _, ml = self.model(xb)
                pr = torch.sigmoid(ml.float())[:, :, t : t + rh, left : left + rw]
                if f > 1:  # back to the ROI's pixels: binned pixel i covers rows f*i .. f*i+f-1
                    pr = torch.nn.functional.interpolate(pr, scale_factor=f, mode="bilinear", align_corners=False)
                pr = pr.cpu().numpy()[:, 0]
                ph, pw = pr.shape[1:]
                q = p[i : i + step]
                q[:, :ph, :pw] = pr
                q[:, ph:, :pw] = pr[:, -1:, :]  # as numpy.pad's "edge": the rows first, then the columns
                q[:, :, pw:] = q[:, :, pw - 1 : pw]
        return _keep_central_stack(p)


def normalise_rois(rois, *, return_scale: bool = False):
    """Every ROI of a stack ``(n, h, w)``: (roi - median of its 3-px ring) / 99th percentile."""
    n = len(rois)
    ring = np.concatenate(
        [
            rois[:, :3].reshape(n, -1),
            rois[:, -3:].reshape(n, -1),
            rois[:, :, :3].reshape(n, -1),
            rois[:, :, -3:].reshape(n, -1),
        ],
        axis=1,
    )
    off = np.median(ring, axis=1)
    scale = np.maximum(np.percentile((rois - off[:, None, None]).reshape(n, -1), 99, axis=1), 1e-3)
    x = ((rois - off[:, None, None]) / scale[:, None, None]).astype(np.float32)
    return (x, off, scale) if return_scale else x


def _keep_central_stack(p, *, block_px: int = RESAMPLE_BLOCK_PX):
    """:func:`_keep_central` of every ROI of the float32 stack ``p`` (n, h, w), in place: one labelling of each block
    of ROIs of at most ``block_px`` pixels (no links across ROIs). Returns ``p``."""
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = ndimage.generate_binary_structure(2, 1)
    for b in frame_blocks(len(p), int(np.prod(p.shape[1:])), block_px):
        q = p[b]
        lab, _ = ndimage.label(q > 0.5, structure=struct)
        per_frame = np.zeros(len(q), int)
        for sl in ndimage.find_objects(lab):
            per_frame[sl[0].start] += 1
        q[per_frame == 0] = 0.0
        for k in np.flatnonzero(per_frame > 1):
            q[k] = _keep_central(q[k])
    return p


def _fold_batchnorm(module):
    """Fold every eval-mode BatchNorm into the convolution before it (same outputs, fewer passes)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        if isinstance(child, torch.nn.Sequential):
            layers = list(child)
            for i in range(len(layers) - 1):
                if isinstance(layers[i], torch.nn.Conv2d) and isinstance(layers[i + 1], torch.nn.BatchNorm2d):
                    child[i] = fuse_conv_bn_eval(layers[i], layers[i + 1])
                    child[i + 1] = torch.nn.Identity()
        else:
            _fold_batchnorm(child)


def bf16_supported(device=None) -> bool:
    """Whether ``device`` (default the CPU, where oneDNN decides) runs bfloat16 natively."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _keep_central(p):
    """Zero every mask component but the one nearest the ROI centre."""
    lab, n = ndimage.label(p > 0.5)
    if n <= 1:
        return p if n == 1 else np.zeros_like(p)
    cy, cx = (p.shape[0] - 1) / 2, (p.shape[1] - 1) / 2
    sizes, coms = label_stats(lab, n)
    best = 1 + np.argmin(np.hypot(coms[:, 0] - cy, coms[:, 1] - cx) - 0.5 * np.sqrt(sizes / np.pi))
    keep = dilate_cross(lab == best, iterations=2)
    return np.where(keep & ~((lab > 0) & (lab != best)), p, 0.0).astype(np.float32)
