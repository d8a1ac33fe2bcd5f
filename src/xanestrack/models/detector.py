"""The learned particle detector (Cycle-GAN): training data, training, predictor.

Two generators translate between a raw optical-density frame (domain A) and a
particle-mask image (domain B, +1 inside every object, -1 outside); two PatchGAN
discriminators judge each domain. The losses are those of Zhu et al. (2017):
least-squares adversarial, cycle consistency (weight 10) and identity (0.5 of the
cycle weight), Adam 2e-4 (beta1 0.5), an image pool of 50 for the discriminators.

The translation is learned *unpaired*: raw frames and mask images need not show the
same scene, so a beamline's own unlabelled frames can be added (``train detector
--raw``). Because our synthetic raw frames come with their exact masks, a supervised
L1 term on those pairs (``paired_weight``) is added while pre-training; it anchors
the mapping (masks of exactly these particles, not merely mask-looking images) and is
kept for the synthetic half of each batch when fine-tuning on unlabelled frames,
whose own half is trained with the unpaired losses only.

Detection runs at reduced resolution (``binning``, chosen from the particle size
range so that particles fall in the trained size range); the segmenter refines at
full resolution. The forward generator's map (> 0) gives the foreground, whose
components go through the same isolation tests as the classical detector.

A model is a folder: ``config.json``, ``weights.pt`` (both generators; loaded with
``weights_only=True``) and ``card.md`` (training settings and validation scores).
Synthetic seeds below 100 are never used for training (evaluation seeds).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import XanestrackError
from ..register import bin_frames
from .loading import check_model_size, load_state, load_weights, read_model_config

__all__ = [
    "DetectorConfig",
    "normalise_frame",
    "make_detector_frames",
    "train_detector",
    "LearnedDetector",
    "default_detector_dir",
    "detector_binning",
]

#: largest binned particle radius the binning aims at. Trained on binned radii of
#: ~3-28 px, the detector still outlines the real SSRL particles of up to 27 binned px
#: radius; the user's largest radius (an upper bound: 8 um by default) is mapped to
#: 40 binned px, which puts the largest real particles there (r ~ 160 px, binned 7x)
#: at ~23 px and keeps the small ones (r ~ 30 px) at ~4 px, large enough for the
#: convexity test (binned 9x, two touching big particles merged, small ones failed it)
TRAINED_MAX_RADIUS = 40.0


def default_detector_dir() -> Path:
    return Path(__file__).resolve().parent / "detector"


def detector_binning(max_radius: float, minimum: int = 2) -> int:
    """Binning that brings particles up to ``max_radius`` px into the trained range."""
    return int(max(minimum, np.ceil(float(max_radius) / TRAINED_MAX_RADIUS)))


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture and training of the Cycle-GAN detector (:func:`train_detector`).

    Written into the model's ``config.json``; ``width``, ``n_blocks`` and ``binning`` are
    read back by :class:`LearnedDetector`.

    Attributes
    ----------
    width : int, default 16
        Channels of the generators' first layer (4x in the residual blocks): about 0.49 M
        parameters per generator at 16 with 6 blocks.
    n_blocks : int, default 6
        Residual blocks of each generator.
    disc_width : int, default 16
        Channels of the PatchGAN discriminators' first layer.
    crop : int, default 128
        Binned px. Side of the random training crops (smaller frames are reflect-padded).
    batch : int, default 4
        Crops per iteration in each domain; with ``raw`` frames, half of domain A's.
    iterations : int, default 1500
        Training iterations: constant learning rate for the first half, then a linear
        decay to zero.
    lr : float, default 2e-4
        Adam learning rate (beta1 0.5) of the generators and the discriminators.
    cycle_weight : float, default 10.0
        Weight of the cycle-consistency loss (L1).
    identity_weight : float, default 0.5
        Weight of the identity loss, in units of ``cycle_weight`` (Zhu et al.).
    paired_weight : float, default 10.0
        Weight of the supervised L1 loss between the translated synthetic frames and
        their true mask images (0: unpaired training only).
    pool_size : int, default 50
        Generated images kept for the discriminators (image pool; 0: none).
    n_stacks : int, default 32
        Synthetic scans generated for training (seeds >= 100 only).
    stress_fraction : float, default 0.0
        Share of the training (and validation) scans drawn from the second scene model,
        the stress family (:mod:`xanestrack.synth_stress`: irregular, textured particles,
        agglomerates, another matrix and illumination), each with its knobs drawn over the
        ranges of issue 15 (domain randomisation, see
        :func:`~xanestrack.synth_stress.randomised_stress_stack`); the rest from
        :mod:`xanestrack.synth`. 0 (the shipped detector's recipe): the first scene model
        only. Measured (fine-tuning the shipped detector at 0.5, 600 iterations): every
        particle of the stress scenes found, but touching particles of the real SSRL frames
        merged (README, Learned models): not shipped.
    cut_contacts : bool, default False
        Cut every binned pixel where two objects meet out of the target images
        (``SynthTruth.frame_contacts``), so that touching particles are apart in them.
        False: the shipped detector's targets (touching objects are one region).
    frames_per_stack : int, default 24
        Energies (frames) of each synthetic scan.
    n_val_stacks : int, default 2
        Unseen synthetic scans for validation (pixel IoU, detection F1 per energy band).
    binning : int, default 2
        Frames are binned by this factor before the network (at inference, at least this,
        see :func:`detector_binning`).
    seed : int, default 0
        Seed of the training data, the initial weights and the batches: the same seed
        gives the same model.
    """

    width: int = 16
    n_blocks: int = 6
    disc_width: int = 16
    crop: int = 128
    batch: int = 4
    iterations: int = 1500
    lr: float = 2e-4
    cycle_weight: float = 10.0
    identity_weight: float = 0.5
    paired_weight: float = 10.0
    pool_size: int = 50
    n_stacks: int = 32
    stress_fraction: float = 0.0
    cut_contacts: bool = False
    frames_per_stack: int = 24
    n_val_stacks: int = 2
    binning: int = 2
    seed: int = 0


def normalise_frame(binned):
    """Map a binned OD frame to about [-1, 1]: background -0.8, brightest objects +0.8.

    The level and scale are the frame's median and 99.9th percentile (of a lightly
    smoothed copy, so that noise does not set the scale): faint pre-edge and bright
    post-edge frames look alike to the network.
    """
    s = ndimage.gaussian_filter(binned, 1.0)
    med = float(np.median(s))
    peak = max(float(np.percentile(s, 99.9)) - med, 1e-4)
    x = -0.8 + 1.6 * (binned - med) / peak
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _synthetic_scan(rng, seed, n_frames):
    """One varied synthetic scan for training (presets, noise, sizes, crowding)."""
    from ..synth import PRESETS, make_synthetic_stack

    preset = PRESETS["hard" if rng.random() < 0.5 else "default"]
    for attempt in range(20):
        scale = rng.uniform(0.6, 1.35)
        lo, hi = preset.radius_range
        over = dict(
            n_energies=n_frames,
            shape=(int(rng.integers(300, 521)), int(rng.integers(300, 521))),
            counts=float(np.exp(rng.uniform(np.log(400), np.log(10000)))),
            radius_range=(max(4.0, lo * scale), max(5.0, hi * scale)),
            n_particles=int(rng.integers(3, 13)),
            n_fines=int(rng.integers(0, 30)),
            n_touching_pairs=int(rng.integers(0, 3)),
            background_od=float(rng.uniform(0.02, 0.2)),
            background_variation=float(rng.uniform(0.05, 0.4)),
            flat_shape_variation=float(rng.uniform(0.0, 0.15)),
        )
        try:
            return make_synthetic_stack(replace(preset, **over), seed=seed * 31 + attempt, store_frame_masks=True)
        except ValueError:  # too crowded for this draw: draw again
            continue
    raise RuntimeError("could not place particles in 20 draws")


def make_detector_frames(
    n_stacks: int,
    frames_per_stack: int,
    *,
    seed: int,
    binning: int = 2,
    stress_fraction: float = 0.0,
    cut_contacts: bool = False,
    progress=None,
):
    """Raw frames and their mask images, binned: lists of float32 arrays in [-1, 1].

    ``cut_contacts``: see :class:`DetectorConfig`. ``stress_fraction`` of the scans come
    from the stress family (:func:`~xanestrack.synth_stress.randomised_stress_stack`),
    the rest from :mod:`xanestrack.synth` (:func:`_synthetic_scan`).

    Returns ``(frames, masks, stacks)`` where ``stacks`` are the synthetic scans (for
    validation by detection F1).
    """
    from ..synth_stress import randomised_stress_stack

    rng = np.random.default_rng([seed, 23])
    frames, masks, stacks = [], [], []
    for i in range(n_stacks):
        stress = stress_fraction > 0 and rng.random() < stress_fraction
        draw = randomised_stress_stack if stress else _synthetic_scan
        s = draw(rng, 100 + seed * 1000 + i, frames_per_stack)
        od = s.optical_density()
        for k in range(od.shape[0]):
            frames.append(normalise_frame(bin_frames(od[k], binning)))
            target = bin_frames(s.truth.frame_masks[k], binning) >= 0.5
            if cut_contacts:
                # every binned pixel where two objects meet cut out: touching particles stay
                # apart by at least a pixel of the network's grid
                target &= ~(bin_frames(s.truth.frame_contacts[k], binning) > 0)
            masks.append(np.where(target, 1.0, -1.0).astype(np.float32))
        stacks.append(s)
        if progress:
            progress(i + 1, n_stacks)
    return frames, masks, stacks


def raw_frames(paths, *, binning_for=None, log=print):
    """Unlabelled frames of the user's own scans (any readable format), normalised.

    ``binning_for(stack) -> int`` picks each scan's binning (default: from the
    pixel size as ``xanestrack run`` does, else 2).
    """
    from ..io import read_stack
    from ..stack import sanitize_stack

    out = []
    for p in paths:
        st = read_stack(p)
        od, _ = sanitize_stack(st.od, source=str(p))
        b = binning_for(st) if binning_for else 2
        for k in range(od.shape[0]):
            out.append(normalise_frame(bin_frames(od[k], b)))
        log(f"{p}: {od.shape[0]} frames of {od.shape[1]} x {od.shape[2]} px, binned {b}x")
    return out


def _augment(rng, *arrays):
    k = int(rng.integers(8))
    out = []
    for a in arrays:
        if k & 1:
            a = a[..., ::-1]
        if k & 2:
            a = a[..., ::-1, :]
        if k & 4:
            a = np.swapaxes(a, -1, -2)
        out.append(np.ascontiguousarray(a))
    return out


def _crop(rng, size, *arrays):
    h, w = arrays[0].shape
    if h < size or w < size:
        py, px = max(0, size - h), max(0, size - w)
        arrays = [np.pad(a, ((py // 2, py - py // 2), (px // 2, px - px // 2)), mode="reflect") for a in arrays]
        h, w = arrays[0].shape
    y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return [a[y : y + size, x : x + size] for a in arrays]


class _Pool:
    """History of generated images for the discriminators (Shrivastava et al.)."""

    def __init__(self, size, rng):
        self.size, self.items, self.rng = size, [], rng

    def __call__(self, batch):
        import torch

        if self.size == 0:
            return batch
        out = []
        for im in batch.detach():
            if len(self.items) < self.size:
                self.items.append(im)
                out.append(im)
            elif self.rng.random() < 0.5:
                j = int(self.rng.integers(self.size))
                out.append(self.items[j])
                self.items[j] = im
            else:
                out.append(im)
        return torch.stack(out)


#: closing radius (binned px) applied to the generator's foreground: the translated
#: masks of particles with strong inner contrast (chemistry gradients, grains) come
#: out with notches that the convexity test would reject (measured: default seed 1
#: F1 0.945 -> 1.000, hard seed 3 0.976 -> 1.000)
CLOSING_RADIUS = 2
#: closing radius (binned px) of the map whose separate parts split a component of the closed one
#: (:func:`xanestrack.detect.split_by`): closing every map by 1 only lost notched particles (F1 on the
#: default scenes 1.000 -> 0.998)
SPLIT_CLOSING_RADIUS = 0


def _on(fg, hidden, near):
    """The components of ``fg`` that lie on ``hidden``, apart from ``near`` (what was found first)."""
    apart = fg & ~ndimage.binary_dilation(near, iterations=1)
    lab, _ = ndimage.label(apart)
    return np.isin(lab, np.unique(lab[hidden & (lab > 0)]))


#: :func:`_pieces`: the map covered a bright body in pieces where its components cover less than this share of
#: the body (the connected part of the frame above half a component's height over the background). Crowded
#: textured NCA particles (the probe's FXI scenes, 30 nm, r 40-62 px, binned 7x, beside particles 1.5-2 times
#: thicker; seeds 1-3, every 4th frame): 227 pieces, covering 0.14-0.59 of bodies of 6.3-71 times the smallest
#: particle's area and at most 0.19 of the largest's. The stress family and the default scene (seeds 1-2, every
#: 6th frame, binned 2x): of 1244 components covering less than 0.6 of their bodies, all but one lay alone in
#: a body and large enough for a particle, or in bodies under 6 times the smallest area, or over 0.25 times the
#: largest (matrix joined to particles); the one: an 8-px fragment in a body of 389 px (stress-fines seed 1)
PIECE_COVERAGE = 0.6
#: ... a body of at least this many times the smallest particle's area (``min_radius``) ...
PIECE_BODY_MIN = 6.0
#: ... and at most this share of the largest particle's area (``max_radius``)
PIECE_BODY_MAX = 0.25


def _pieces(x, fg, *, min_area: float, max_area: float):
    """Components of ``fg`` (the binned frame ``x``'s foreground) that are pieces of one larger bright body.

    For each component, its body is the connected region of the lightly smoothed frame above half the
    component's height (median) over the frame's background (the median of what lies 3 px or more off ``fg``),
    holes filled. The components in a body (specks aside) are pieces where there are two or more, or one too small for a
    particle (``min_area``), and they cover less than :data:`PIECE_COVERAGE` of it, and the body is of a
    particle's size (:data:`PIECE_BODY_MIN` times ``min_area`` to :data:`PIECE_BODY_MAX` times ``max_area``,
    binned px): the map covered only parts of a particle or of touching ones. Components fainter than 5
    noise deviations are not examined.

    Returns
    -------
    pieces, bodies : bool arrays of ``x``'s shape (all False: none)
    """
    from ..detect import SPECK_AREA
    from ..robust import robust_sigma

    pieces, bodies = np.zeros(fg.shape, bool), np.zeros(fg.shape, bool)
    near = ndimage.binary_dilation(fg, iterations=3)
    if not fg.any() or near.all():
        return pieces, bodies
    s = ndimage.gaussian_filter(np.asarray(x, np.float32), 1.0)
    bg = float(np.median(s[~near]))
    noise = robust_sigma(x - s) + 1e-12
    lab, n = ndimage.label(fg)
    heights = np.asarray(ndimage.median(s, lab, np.arange(1, n + 1)), float) - bg
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    speck = max(SPECK_AREA, min_area / 16)
    slices = ndimage.find_objects(lab)
    # each body is sought around its component only, out to twice the radius of the largest body examined: one
    # that reaches that far is no particle's (the whole frame, labelled and filled for each component, cost 1.9 s
    # of the 4.4 s the detector took at 143 x 1024^2, stress-all, 13 key frames; the detections the same)
    reach = 2 * int(np.ceil(np.sqrt(PIECE_BODY_MAX * max_area / np.pi))) + 2
    rows, cols = fg.shape
    for i in np.flatnonzero(heights > 5 * noise) + 1:
        if sizes[i] < speck:
            continue
        sl = slices[i - 1]
        y0, y1 = max(0, sl[0].start - reach), min(rows, sl[0].stop + reach)
        x0, x1 = max(0, sl[1].start - reach), min(cols, sl[1].stop + reach)
        win = (slice(y0, y1), slice(x0, x1))
        own = lab[win] == i
        if pieces[win][own].any():
            continue
        above, _ = ndimage.label(s[win] > bg + 0.5 * heights[i - 1])
        ids = np.unique(above[own])
        region = np.isin(above, ids[ids > 0])
        if (
            (y0 > 0 and region[0].any())
            or (y1 < rows and region[-1].any())
            or (x0 > 0 and region[:, 0].any())
            or (x1 < cols and region[:, -1].any())
        ):
            continue  # reaches beyond its window inside the frame: larger than a particle's body
        body = ndimage.binary_fill_holes(region)
        area = int(body.sum())
        inside = np.unique(lab[win][body & fg[win]])
        inside = inside[inside > 0]
        # specks, which no table lists, are not parts (a particle of the stress family with three 1-px specks
        # in its body was looked at again)
        parts = inside[sizes[inside] >= speck]
        # the map broke the body into parts, or kept of it only a part too small for a particle
        if (
            (parts.size >= 2 or sizes[i] < min_area)
            and PIECE_BODY_MIN * min_area <= area <= PIECE_BODY_MAX * max_area
            and (fg[win] & body).sum() < PIECE_COVERAGE * area
        ):
            pieces |= np.isin(lab, inside)
            bodies[win] |= body
    return pieces, bodies


def _foreground(prob_map, closing: int = CLOSING_RADIUS):
    fg = prob_map > 0
    if closing:
        from skimage.morphology import disk

        p = closing + 1
        fg = ndimage.binary_closing(np.pad(fg, p), disk(closing))[p:-p, p:-p]
    return ndimage.binary_fill_holes(fg)


def _pixel_iou(model, frames, masks):
    inter = union = 0
    model.eval()
    for p, m in zip(_predict_maps(model, frames), masks):
        a, b = _foreground(p), m > 0
        inter += int((a & b).sum())
        union += int((a | b).sum())
    return inter / max(union, 1)


#: pixels per forward batch on the CPU: small batches are faster there (the activations of a
#: few frames stay in cache): 232^2 frames 11.6 ms each in batches of 4, 14.1 alone, 18.1 in
#: batches of 16; 512^2 frames (a 1024^2 scan binned 2x) 77 ms alone, 135 ms in batches of 4
#: (the same maps to the bit)
BATCH_PIXELS = 4 * 232 * 232
#: binned pixels per chunk of frames in :meth:`LearnedDetector.__call__` (16 frames of a 460^2 scan binned 2x)
CHUNK_PIXELS = 16 * 232 * 232


def _predict_maps(model, frames, batch: int | None = None, precision: str = "fp32", device=None):
    """Forward generator on whole frames (padded to a multiple of 4, reflect).

    ``batch``: frames per forward pass (default on the CPU: as many as make :data:`BATCH_PIXELS`,
    1 to 4; elsewhere 4);
    ``precision="bf16"`` runs the convolutions in bfloat16 (autocast). ``device``:
    where ``model`` is (default the CPU).
    """
    import torch

    device = torch.device("cpu") if device is None else torch.device(device)

    groups = {}
    for i, f in enumerate(frames):
        groups.setdefault(f.shape, []).append(i)
    res = [None] * len(frames)
    with torch.inference_mode():
        for shape, idx in groups.items():
            h, w = shape
            ph, pw = (-h) % 4, (-w) % 4
            n = batch or (max(1, min(4, BATCH_PIXELS // max(h * w, 1))) if device.type == "cpu" else 4)
            for s in range(0, len(idx), n):
                sel = idx[s : s + n]
                x = np.stack([np.pad(frames[i], ((0, ph), (0, pw)), mode="reflect") for i in sel])[:, None]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    y = model(torch.from_numpy(x).to(device)).float().cpu().numpy()[:, 0, :h, :w]
                for i, yy in zip(sel, y):
                    res[i] = yy
    return res


def _f1_on_stacks(model, stacks, binning):
    import pandas as pd

    from ..detect import DetectOptions
    from ..evaluate import detection_f1, f1_by_band

    det = LearnedDetector.from_modules(model, binning=binning, options=DetectOptions())
    counts = pd.concat([detection_f1(det(s.optical_density()), s.truth, s.energies_ev) for s in stacks])
    return {band: float(v) for band, v in f1_by_band(counts)["f1"].items()}


def train_detector(
    out_dir,
    *,
    config: DetectorConfig = DetectorConfig(),
    raw=None,
    init_dir=None,
    log=print,
    progress=None,
) -> dict:
    """Train the Cycle-GAN on generated frames (plus unlabelled ``raw`` frames) and write the model folder.

    Parameters
    ----------
    out_dir : path
        The model folder to write (``weights.pt``, ``config.json``, ``card.md``).
    config : DetectorConfig
    raw : list of ndarray, optional
        Normalised, binned unlabelled frames (see :func:`raw_frames`): half of every
        batch of domain A is drawn from them (unpaired losses only).
    init_dir : path, optional
        Start from this model (fine-tuning), e.g. the shipped detector; its architecture
        and binning replace those of ``config``.
    log : callable(str)
        Progress lines (every tenth of the iterations).
    progress : callable(done, total), optional

    Returns
    -------
    dict with ``history`` (a row per logged iteration: mean losses, validation pixel
    IoU), ``n_params`` (of the forward generator) and ``f1`` (validation detection F1
    per energy band).

    Raises
    ------
    ValueError
        If ``init_dir`` holds no trained detector.

    Notes
    -----
    Reproducible from ``config.seed``: the torch generator is seeded before the networks
    are built, and one numpy generator draws every batch (crops, augmentations) and the
    image pools' choices.
    """
    import torch

    config = _starting_config(config, init_dir)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 5])
    t0 = time.perf_counter()
    mix = dict(binning=config.binning, stress_fraction=config.stress_fraction, cut_contacts=config.cut_contacts)
    fa, fb, _ = make_detector_frames(config.n_stacks, config.frames_per_stack, seed=config.seed, **mix)
    va, vb, vstacks = make_detector_frames(config.n_val_stacks, config.frames_per_stack, seed=config.seed + 500, **mix)
    t_data = time.perf_counter() - t0
    log(
        f"training data: {len(fa)} frames from {config.n_stacks} synthetic scans, validation {len(va)} frames ({t_data:.0f} s)"
    )
    nets = _build_networks(config, init_dir)
    n_params = sum(p.numel() for p in nets.G.parameters())
    train = _Trainer(nets, config, rng)
    n_raw = config.batch // 2 if raw else 0
    history = []
    te = time.perf_counter()
    run = dict(g=0.0, d=0.0, cyc=0.0, pair=0.0, n=0)
    every = max(1, config.iterations // 10)
    for it in range(config.iterations):
        a, b, pairs = _draw_batch(rng, config, fa, fb, raw, n_raw)
        for k, v in train.step(a, b, pairs).items():
            run[k] += v
        run["n"] += 1
        if (it + 1) % every == 0 or it + 1 == config.iterations:
            n = run.pop("n")
            row = dict(iteration=it + 1, seconds=time.perf_counter() - te, **{k: v / n for k, v in run.items()})
            row["val_pixel_iou"] = _pixel_iou(nets.G, va, vb)
            history.append(row)
            log(
                f"iteration {it + 1}/{config.iterations}: adversarial {row['g']:.3f}, discriminators {row['d']:.3f}, "
                f"cycle {row['cyc']:.3f}, paired {row['pair']:.3f}, val pixel IoU {row['val_pixel_iou']:.3f} "
                f"({row['seconds']:.0f} s)"
            )
            run = dict(g=0.0, d=0.0, cyc=0.0, pair=0.0, n=0)
        if progress:
            progress(it + 1, config.iterations)
    t_train = time.perf_counter() - te
    nets.G.eval()
    f1 = _f1_on_stacks(nets.G, vstacks, config.binning)
    out = Path(out_dir)
    _write_model(out, nets, config, n_params=n_params, init_dir=init_dir, raw=raw)
    card = _model_card(
        config,
        history,
        f1,
        n_params=n_params,
        n_frames=len(fa),
        n_val_frames=len(va),
        raw=raw,
        init_dir=init_dir,
        t_train=t_train,
        t_data=t_data,
    )
    (out / "card.md").write_text(card)
    return dict(history=history, n_params=n_params, f1=f1)


def _starting_config(config: DetectorConfig, init_dir) -> DetectorConfig:
    """``config``, with the architecture and binning of the model in ``init_dir`` when fine-tuning."""
    if init_dir is None:
        return config
    if not (Path(init_dir) / "weights.pt").is_file():
        raise ValueError(f"no trained detector in {init_dir} to start from")
    base = read_model_config(init_dir, kind="detector", required=("width", "n_blocks"))
    return replace(config, **{k: base[k] for k in ("width", "n_blocks", "disc_width", "binning") if k in base})


@dataclass(frozen=True)
class _Networks:
    """The Cycle-GAN: generators raw -> mask (``G``) and mask -> raw (``F``), discriminators of each domain."""

    G: object
    F: object
    DA: object
    DB: object


def _build_networks(config: DetectorConfig, init_dir) -> _Networks:
    """New networks (torch's generator draws their initial weights), or those of ``init_dir``."""
    from .nets import PatchDiscriminator, ResnetGenerator

    G = ResnetGenerator(1, 1, config.width, config.n_blocks)  # raw -> mask
    F = ResnetGenerator(1, 1, config.width, config.n_blocks)  # mask -> raw
    DA, DB = PatchDiscriminator(1, config.disc_width), PatchDiscriminator(1, config.disc_width)
    if init_dir is not None:
        state = load_weights(init_dir, kind="detector")
        G.load_state_dict(state["G"])
        F.load_state_dict(state["F"])
        if "DA" in state:
            DA.load_state_dict(state["DA"])
            DB.load_state_dict(state["DB"])
    return _Networks(G, F, DA, DB)


def _draw_batch(rng, config: DetectorConfig, fa, fb, raw, n_raw):
    """One batch: domain A (``n_raw`` unlabelled frames, then synthetic frames with their
    masks as pairs) and domain B (unpaired mask images), random crops and symmetries.

    Returns ``(a, b, pairs)``: tensors (batch, 1, crop, crop) and ``[(index in batch, mask), ...]``.
    """
    import torch

    a_list, pair_list, b_list = [], [], []
    for j in range(config.batch):
        if j < n_raw:
            (x,) = _crop(rng, config.crop, raw[int(rng.integers(len(raw)))])
            a_list.append(_augment(rng, x)[0])
        else:
            i = int(rng.integers(len(fa)))
            x, y = _augment(rng, *_crop(rng, config.crop, fa[i], fb[i]))
            a_list.append(x)
            pair_list.append((j, y))
        (yb,) = _crop(rng, config.crop, fb[int(rng.integers(len(fb)))])  # unpaired mask image
        b_list.append(_augment(rng, yb)[0])
    a = torch.from_numpy(np.stack(a_list)[:, None])
    b = torch.from_numpy(np.stack(b_list)[:, None])
    return a, b, pair_list


class _Trainer:
    """Optimisers, learning-rate schedules, image pools and losses of the Cycle-GAN (Zhu et al. 2017)."""

    def __init__(self, nets: _Networks, config: DetectorConfig, rng):
        import torch

        self.nets = nets
        G, F, DA, DB = nets.G, nets.F, nets.DA, nets.DB
        self.opt_g = torch.optim.Adam(list(G.parameters()) + list(F.parameters()), lr=config.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(list(DA.parameters()) + list(DB.parameters()), lr=config.lr, betas=(0.5, 0.999))
        # constant rate for the first half, then linear decay to zero (Zhu et al.)
        half = config.iterations // 2
        lam = lambda it: 1.0 if it < half else max(0.0, 1.0 - (it - half) / max(config.iterations - half, 1))  # noqa: E731
        self.sch_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lam)
        self.sch_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, lam)
        self.pool_a, self.pool_b = _Pool(config.pool_size, rng), _Pool(config.pool_size, rng)
        self.mse, self.l1 = torch.nn.MSELoss(), torch.nn.L1Loss()
        self.lc, self.li, self.lp = (
            config.cycle_weight,
            config.identity_weight * config.cycle_weight,
            config.paired_weight,
        )

    def step(self, a, b, pair_list) -> dict:
        """One update of the generators, then of the discriminators; the losses as floats."""
        import torch

        G, F, DA, DB = self.nets.G, self.nets.F, self.nets.DA, self.nets.DB
        mse, l1, lc, li, lp = self.mse, self.l1, self.lc, self.li, self.lp
        G.train(), F.train(), DA.train(), DB.train()
        fake_b = G(a)
        fake_a = F(b)
        rec_a = F(fake_b)
        rec_b = G(fake_a)
        loss_adv = mse(DB(fake_b), torch.ones_like(DB(fake_b))) + mse(DA(fake_a), torch.ones_like(DA(fake_a)))
        loss_cyc = l1(rec_a, a) + l1(rec_b, b)
        loss_idt = l1(G(b), b) + l1(F(a), a)
        loss_g = loss_adv + lc * loss_cyc + li * loss_idt
        loss_pair = torch.zeros(())
        if pair_list and lp > 0:
            idx = torch.tensor([j for j, _ in pair_list])
            tgt = torch.from_numpy(np.stack([y for _, y in pair_list])[:, None])
            loss_pair = l1(fake_b[idx], tgt)
            loss_g = loss_g + lp * loss_pair
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        # discriminators: real -> 1, (pooled) fake -> 0
        pa, pb = self.pool_a(fake_a), self.pool_b(fake_b)
        da_r, da_f = DA(a), DA(pa)
        db_r, db_f = DB(b), DB(pb)
        loss_d = 0.5 * (mse(da_r, torch.ones_like(da_r)) + mse(da_f, torch.zeros_like(da_f)))
        loss_d = loss_d + 0.5 * (mse(db_r, torch.ones_like(db_r)) + mse(db_f, torch.zeros_like(db_f)))
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        self.sch_g.step()
        self.sch_d.step()
        return dict(
            g=float(loss_adv.detach()),
            d=float(loss_d.detach()),
            cyc=float(loss_cyc.detach()),
            pair=float(loss_pair.detach()),
        )


def _write_model(out: Path, nets: _Networks, config: DetectorConfig, *, n_params, init_dir, raw):
    """``weights.pt`` (all four networks: the discriminators are kept for later fine-tuning) and ``config.json``."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    # the discriminators are kept for later fine-tuning (unpaired adaptation restarts from them)
    torch.save(
        {"G": nets.G.state_dict(), "F": nets.F.state_dict(), "DA": nets.DA.state_dict(), "DB": nets.DB.state_dict()},
        out / "weights.pt",
    )
    cfg = dict(
        asdict(config),
        architecture="ResnetGenerator (Cycle-GAN)",
        n_params_generator=n_params,
        normalisation="binned frame: -0.8 + 1.6 (x - median) / (99.9th percentile - median), clipped to [-1, 1]",
        fine_tuned_from=str(init_dir) if init_dir else None,
        n_raw_frames=len(raw) if raw else 0,
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=1))


def _model_card(
    config: DetectorConfig, history, f1, *, n_params, n_frames, n_val_frames, raw, init_dir, t_train, t_data
) -> str:
    """The model card (markdown): how the detector was trained, on what, its validation scores."""
    final = history[-1]
    raw_line = (
        f"Fine-tuned from `{init_dir}` with {len(raw)} unlabelled user frames (half of every raw-domain batch; unpaired losses only).\n"
        if raw
        else (f"Fine-tuned from `{init_dir}` (its card is that model's training).\n" if init_dir else "")
        + "No real data were used for training.\n"
    )
    from ..synth_stress import RANDOMISED_RANGES

    mix = (
        f"about {100 * config.stress_fraction:.0f} % of them from the second scene model, the stress family "
        f"(`xanestrack.synth_stress`: {RANDOMISED_RANGES}), the rest "
        if config.stress_fraction > 0
        else ""
    )
    if config.cut_contacts:
        mix = "target images with the contacts of touching objects cut out; " + mix
    return (
        f"""# Cycle-GAN particle detector

Forward generator raw frame -> particle-mask image: ResNet generator, width {config.width}, {config.n_blocks}
residual blocks, {n_params} parameters; a second generator of the same size maps back; PatchGAN
discriminators (width {config.disc_width}). Trained by `xanestrack train detector` (seed {config.seed}) on
{n_frames} frames of {config.n_stacks} varied synthetic scans ({mix}`xanestrack.synth`, default and hard presets,
400-10000 counts, radii x0.6-1.35, 3-12 particles, up to 30 fines, up to 2 touching pairs; seeds >= 100),
binned {config.binning}x, random {config.crop} x {config.crop} crops, batch {config.batch}, {config.iterations}
iterations: LSGAN + cycle (weight {config.cycle_weight}) + identity ({config.identity_weight} x cycle) + paired L1 on
the synthetic pairs (weight {config.paired_weight}), Adam {config.lr} (beta1 0.5), linear decay over the
second half, image pool {config.pool_size}, the 8 symmetries of the square as augmentation.
Training time {t_train:.0f} s on the CPU (+ {t_data:.0f} s to generate the data).
{raw_line}
Validation ({n_val_frames} frames of {config.n_val_stacks} unseen synthetic scans): pixel IoU
{final["val_pixel_iou"]:.4f}; isolated-particle detection F1 per energy band:
{", ".join(f"{k} {v:.3f}" for k, v in f1.items())}.

| iteration | adversarial | discriminators | cycle | paired | val pixel IoU | s |
|---|---|---|---|---|---|---|
"""
        + "\n".join(
            f"| {h['iteration']} | {h['g']:.3f} | {h['d']:.3f} | {h['cyc']:.3f} | {h['pair']:.3f} | {h['val_pixel_iou']:.4f} | {h['seconds']:.0f} |"
            for h in history
        )
        + "\n"
    )


class LearnedDetector:
    """Numpy in, table out: ``detector(od) -> DataFrame`` (columns of ``DETECTION_COLUMNS``).

    Parameters
    ----------
    model_dir : path, optional
        A model folder (default: the shipped detector).
    options : DetectOptions
        Size, border and convexity tests (as for the classical detector); the binning
        follows ``options.max_radius`` (see :func:`detector_binning`).
    binning : int, optional
        Override the binning.
    precision : "auto", "fp32" or "bf16"
        "auto": bfloat16 where the device supports it natively (measured 2x faster on the CPU).
    device : "cpu" (default), "cuda" or "cuda:N"
        Where the generator runs; frames and maps stay numpy arrays.
    """

    def __init__(self, model_dir=None, *, options=None, binning=None, precision: str = "auto", device: str = "cpu"):
        from ..detect import DetectOptions
        from .nets import ResnetGenerator

        d = Path(model_dir) if model_dir else default_detector_dir()
        if not (d / "weights.pt").is_file():
            raise XanestrackError(f"no trained detector in {d}: run 'xanestrack train detector' first")
        self.config = read_model_config(d, kind="detector", required=("width", "n_blocks"))
        build = lambda: ResnetGenerator(1, 1, self.config["width"], self.config["n_blocks"])  # noqa: E731
        check_model_size(build, path=d / "config.json", kind="detector")
        state = load_weights(d, kind="detector")
        G = build()
        load_state(G, state.get("G") if isinstance(state, dict) else state, path=d / "weights.pt", kind="detector")
        self._init(G, options or DetectOptions(), binning, precision, device)

    @classmethod
    def from_modules(cls, generator, *, options, binning=None, precision: str = "fp32"):
        self = cls.__new__(cls)
        self.config = {}
        self._init(generator, options, binning, precision)
        return self

    def _init(self, G, options, binning, precision="auto", device="cpu"):
        from .loading import torch_device

        self.device = torch_device(device)
        G.eval()
        self.model = G.to(self.device)
        self.options = options
        self.binning = int(binning) if binning else detector_binning(options.max_radius, options.binning)
        if precision == "auto":
            from .segmenter import bf16_supported

            precision = "bf16" if bf16_supported(self.device) else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision

    def maps(self, od, frames=None):
        """The forward generator's maps (binned frames, > 0 = particle)."""
        idx = list(range(od.shape[0])) if frames is None else list(frames)
        return self._maps([bin_frames(od[k], self.binning) for k in idx])

    def _maps(self, binned):
        return _predict_maps(
            self.model, [normalise_frame(x) for x in binned], precision=self.precision, device=self.device
        )

    def _second_look(self, x, fg, finer):
        """``fg``, ``finer`` (the binned frame ``x``'s foregrounds) with the particles a far brighter one hid.

        The network sees each frame scaled by its brightest objects (:func:`normalise_frame`): one particle
        far thicker than the rest (an edge step of 2.5-3 beside steps of 0.3-0.5) scaled the others down to the
        background, and they were not found (4 of 9 lost, nothing said). Where
        :func:`xanestrack.detect.hidden_objects` finds such objects left beside everything found, the frame is
        looked at again with everything found replaced by its median; what that finds on them is added.
        """
        from ..detect import hidden_objects

        found = hidden_objects(
            x, fg, min_radius=self.options.min_radius / self.binning, max_radius=self.options.max_radius / self.binning
        )
        if found is None:
            return fg, finer
        hidden, near = found
        keep, keep_finer = self._look_again(x, near, hidden)
        return fg | keep, finer | keep_finer

    def _look_again(self, x, near, on):
        """The foregrounds (plain, and split as ``finer`` is) of the binned frame ``x`` mapped again with the
        pixels ``near`` set to its median, kept where they lie on ``on`` (:func:`_on`)."""
        x2 = np.where(near, np.float32(np.median(x)), x).astype(x.dtype)
        m2 = self._maps([x2])[0]
        keep = _on(_foreground(m2), on, near)
        return keep, _foreground(m2, closing=SPLIT_CLOSING_RADIUS) & keep

    def _look_at_pieces(self, x, fg, finer):
        """``fg``, ``finer`` with the pieces of particles the map covered in part (:func:`_pieces`) looked at again.

        The network sees each frame scaled by its brightest objects (:func:`normalise_frame`): crowded, textured
        particles beside thicker ones came out of its map in pieces (the probe's FXI scenes at 30 nm, binned
        7x: NCA particles of radius 40-62 px, primary grains 1.5-2 binned px, as fragments of radius 7-24 px,
        dropped as too small or not convex, or kept as a part of a particle). The binning is not the cause: with
        the particles found whole set to the background, the same 7x frame's map outlined the others whole
        (seed 3, frame 0). Where there are such pieces, the frame is looked at again with everything else found
        replaced by its median (as :meth:`_second_look` does); the parts of that map
        on the pieces' bodies replace the pieces, and the region tests then cut touching particles at their
        necks as usual. Scans of :data:`~xanestrack.detect.RESCUE_MIN_FRAMES` frames or more (as the rescue).
        """
        b = self.binning
        pieces, bodies = _pieces(
            x,
            fg,
            min_area=np.pi * (self.options.min_radius / b) ** 2,
            max_area=np.pi * (self.options.max_radius / b) ** 2,
        )
        if not pieces.any():
            return fg, finer
        keep, keep_finer = self._look_again(x, ndimage.binary_dilation(fg & ~pieces, iterations=1), bodies)
        if not keep.any():
            return fg, finer
        return (fg & ~pieces) | keep, (finer & ~pieces) | keep_finer

    def __call__(self, od, frames=None, progress=None):
        import pandas as pd

        from ..detect import RESCUE_MIN_FRAMES, empty_detections, regions_table

        od = np.asarray(od)
        if od.ndim != 3:
            raise ValueError(f"od must be (n_frames, rows, cols), got shape {od.shape}")
        idx = list(range(od.shape[0])) if frames is None else [int(k) for k in frames]
        out = []
        # frames binned at a time: 16, fewer where they are large (their copies and maps add up: 16 binned
        # 2048^2 frames held 3 x 64 MiB beside the generator's activations)
        h, w = (-(-s // self.binning) for s in od.shape[1:])
        chunk = int(np.clip(CHUNK_PIXELS // max(h * w, 1), 1, 16))
        for s in range(0, len(idx), chunk):
            sel = idx[s : s + chunk]
            binned = [bin_frames(od[k], self.binning) for k in sel]
            for k, x, m in zip(sel, binned, self._maps(binned)):
                corr = x - np.median(x)
                fg, finer = self._second_look(x, _foreground(m), _foreground(m, closing=SPLIT_CLOSING_RADIUS))
                if len(idx) >= RESCUE_MIN_FRAMES:
                    # as the rescue: a scan of two frames makes a track of one detection (the real SSRL 6-2c
                    # pair, 8324 eV: three bodies looked at again, a particle vouched for 2/2 lost its vouching)
                    fg, finer = self._look_at_pieces(x, fg, finer)
                out.append(
                    regions_table(
                        fg,
                        corr,
                        frame_index=k,
                        binning=self.binning,
                        options=self.options,
                        image=x if len(idx) >= RESCUE_MIN_FRAMES else None,
                        # touching particles the closing joined, apart in the map closed less
                        split=finer,
                    )
                )
            if progress is not None:
                progress(min(s + chunk, len(idx)), len(idx))
        out = [d for d in out if len(d)]
        return pd.concat(out, ignore_index=True) if out else empty_detections()
