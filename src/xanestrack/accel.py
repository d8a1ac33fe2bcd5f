"""The per-particle array work on a GPU: resampling, smoothing and correlation in PyTorch.

Where ``run --device cuda`` names a GPU, the learned models run there (:mod:`.models`) and,
inside :func:`arrays_on`, so do the three kernels every particle's following, separation and
alignment spend their array time in: :func:`register.resample_windows
<xanestrack.register.resample_windows>` (its cubic B-spline prefilter and interpolation
sums), :func:`register.edge_images <xanestrack.register.edge_images>` (Gaussian smoothing)
and :func:`register.correlate_shifts <xanestrack.register.correlate_shifts>` (FFT
cross-correlation and the sub-pixel peak). Their inputs and outputs stay numpy arrays: a
window stack is a few MB, moved in a fraction of a millisecond, and everything around them
is unchanged. Outside :func:`arrays_on` (the default, and always on the CPU) the numpy and
scipy code runs, so CPU results do not depend on this module.

The GPU path computes what the CPU path computes, in float32, with one difference: the
cubic B-spline prefilter (a recursive filter in scipy) is its impulse response,
``h[k] = -6 z / (1 - z^2) z^|k|`` with ``z = sqrt(3) - 2``, truncated at ``|k| <= 12``
(``|z|^12 < 2e-7``) and applied to crops 12 px wider on every side, edge-replicated where
they cross the frame border; scipy's prefilter works on crops 4 px wider and starts its
recursion with its own boundary rule. Cubic interpolated values agree to about 0.03 % of the
windows' spread (a textured test stack: 2.5e-4 where the spread is 0.93; ``tests/test_accel.py``
allows 5e-4 of it); bilinear and nearest to float32 rounding.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

__all__ = ["arrays_on", "array_device"]

SPLINE_TAPS = 12  # the prefilter's half-length: |sqrt(3) - 2|^12 < 2e-7
_global = {"device": None, "users": 0}
_lock = threading.Lock()


def array_device():
    """The :class:`torch.device` the array kernels run on inside :func:`arrays_on`, else None (numpy)."""
    return _global["device"]


@contextmanager
def arrays_on(device):
    """Run the per-particle array kernels on ``device`` ("cuda", "cuda:N", a :class:`torch.device`) while inside.

    ``"cpu"`` or None leaves the numpy code in place (nothing changes). Process-wide, so that
    the pipeline's worker threads see it too, and shared: scans run side by side in threads
    (``series``) may each enter it with the same device; it ends when the last one leaves.

    Raises
    ------
    XanestrackError
        Where ``device`` names no GPU PyTorch sees, or another device is in use already.
    """
    if device is None or str(device).strip().lower() == "cpu":
        yield None
        return
    from .models.loading import torch_device

    with _use(torch_device(str(device))) as dev:
        yield dev


@contextmanager
def _use(dev):
    from .errors import XanestrackError

    with _lock:
        if _global["users"] and _global["device"] != dev:
            raise XanestrackError(f"array device {dev}: {_global['device']} is in use in this process already")
        _global["device"] = dev
        _global["users"] += 1
    try:
        yield dev
    finally:
        with _lock:
            _global["users"] -= 1
            if not _global["users"]:
                _global["device"] = None


def _forced(device):
    """Test hook: the torch kernels on any device, the CPU included."""
    import torch

    return _use(torch.device(device))


def _prefilter_kernel(torch, device):
    z = np.sqrt(3.0) - 2.0
    k = np.arange(-SPLINE_TAPS, SPLINE_TAPS + 1)
    h = (-6.0 * z / (1.0 - z * z)) * z ** np.abs(k)
    return torch.as_tensor(h, dtype=torch.float32, device=device)


def interpolate(crops, wy, wx, taps, pad: int, shape, *, prefilter: bool):
    """``sum_t wx[t] * (sum_s wy[s] * crops[:, pad + s : pad + s + h, :])[:, :, pad + t : pad + t + w]`` on the device.

    ``crops`` (n, h + 2 pad + 1, w + 2 pad + 1) float32, ``wy``, ``wx`` (len(taps), n): the
    interpolation of :func:`register.resample_windows <xanestrack.register.resample_windows>`;
    with ``prefilter`` the crops are first turned into cubic B-spline coefficients (``pad``
    must then be at least ``SPLINE_TAPS + 2``). Returns numpy (n, h, w) float32.
    """
    import torch

    dev = array_device()
    h, w = shape
    c = torch.as_tensor(np.ascontiguousarray(crops), device=dev)
    if prefilter:
        k = _prefilter_kernel(torch, dev)
        n = SPLINE_TAPS
        x = c[:, None]
        x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1))  # rows: n lost at either end
        x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1))
        c = x[:, 0]
        pad = pad - n
    wy = torch.as_tensor(np.asarray(wy, np.float32), device=dev)
    wx = torch.as_tensor(np.asarray(wx, np.float32), device=dev)
    tmp = sum(wy[j][:, None, None] * c[:, pad + t : pad + t + h, :] for j, t in enumerate(taps))
    res = sum(wx[j][:, None, None] * tmp[:, :, pad + t : pad + t + w] for j, t in enumerate(taps))
    return res.cpu().numpy()


def gaussian(win, sigma: float):
    """Each frame of ``win`` (n, h, w) smoothed by a Gaussian of ``sigma`` px, edges replicated: what
    ``ndimage.gaussian_filter(win, (0, sigma, sigma), mode="nearest")`` gives (truncated at 4 sigma).
    Takes and returns numpy float32, or a device tensor where given one."""
    import torch

    dev = array_device()
    t = win if isinstance(win, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(win, np.float32), device=dev)
    r = int(4.0 * float(sigma) + 0.5)
    if r < 1:
        return t if isinstance(win, torch.Tensor) else win
    x = np.arange(-r, r + 1)
    g = np.exp(-0.5 * (x / float(sigma)) ** 2)
    k = torch.as_tensor(g / g.sum(), dtype=torch.float32, device=dev)
    y = torch.nn.functional.pad(t[:, None], (r, r, r, r), mode="replicate")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1))
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1))[:, 0]
    return y if isinstance(win, torch.Tensor) else y.cpu().numpy()


def edge_images(win, a, *, sigma: float, floor_scale: float):
    """:func:`register.edge_images <xanestrack.register.edge_images>` after its NaN fill, on the device."""
    import torch

    dev = array_device()
    t = torch.as_tensor(np.ascontiguousarray(win), device=dev)
    g = gaussian(t, sigma)
    at = torch.as_tensor(a, device=dev)
    if floor_scale > 0:
        g = g - gaussian(g, floor_scale * sigma)
    else:
        outer = a < 0.5
        if outer.sum() < 16:
            outer = np.ones(a.shape, bool)
        sub = g[:, torch.as_tensor(outer, device=dev)]
        # np.partition's element n // 2 (the upper median where n is even)
        g = g - torch.kthvalue(sub, sub.shape[1] // 2 + 1, dim=1).values[:, None, None]
    g = g * at
    g = g - g.mean(dim=(1, 2), keepdim=True)
    rms = torch.sqrt((g**2).mean(dim=(1, 2))) + 1e-12
    return (g / rms[:, None, None]).cpu().numpy()


def correlate(ref, imgs, *, max_shift, whitening: float):
    """:func:`register.correlate_shifts <xanestrack.register.correlate_shifts>` on the device; numpy out."""
    import torch

    from .register import _peak_and_neighbours

    dev = array_device()
    r = torch.as_tensor(np.ascontiguousarray(ref), device=dev)
    k = torch.as_tensor(np.ascontiguousarray(imgs), device=dev)
    n, h, w = k.shape
    fr = torch.fft.rfft2(r)
    fk = torch.fft.rfft2(k)
    if whitening:
        fr = fr / (fr.abs() + 1e-12) ** whitening
        fk = fk / (fk.abs() + 1e-12) ** whitening
    x = torch.conj(fr) * fk if r.ndim == 3 else torch.conj(fr)[None] * fk
    cc = torch.fft.irfft2(x, s=(h, w))

    def energy(f):
        e = f.abs() ** 2
        full = 2 * e.sum(dim=(-2, -1)) - e[..., :, 0].sum(dim=-1)
        if w % 2 == 0:
            full = full - e[..., :, -1].sum(dim=-1)
        return full

    norm = torch.sqrt(energy(fr).double() * energy(fk).double()) / (h * w) + 1e-30
    yy = np.fft.fftfreq(h, 1 / h)
    xx = np.fft.fftfreq(w, 1 / w)
    if max_shift is not None:
        far = (np.abs(yy)[:, None] > max_shift) | (np.abs(xx)[None, :] > max_shift)
        cc[:, torch.as_tensor(far, device=dev)] = -float("inf")
    flat = cc.reshape(n, -1).argmax(dim=1)
    iy, ix = flat // w, flat % w
    # the peak and its four neighbours to the host: the fit is a few numbers per image
    pick = _peak_and_neighbours(cc, iy, ix, torch.arange(n, device=dev), torch.stack).double().cpu().numpy()
    iy, ix = iy.cpu().numpy(), ix.cpu().numpy()
    return pick, iy, ix, norm.cpu().numpy(), yy, xx
