"""Loading a model folder (``config.json`` + ``weights.pt``) without trusting it.

A model folder may come from anyone (``--detector-model DIR``). Before anything is
built, its config values are checked against bounds (so that ``n_blocks: 1e7`` or
``canvas: 1e6`` cannot allocate without limit) and the network's parameter count is
computed without allocating it; the weights are read with ``weights_only=True`` and a
file that holds anything but tensors is refused with our own message (never torch's,
which suggests turning the protection off).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import XanestrackError

__all__ = ["read_model_config", "load_weights", "check_model_size", "load_state", "torch_device"]

#: bounds per config key: (smallest, largest); the shipped models sit well inside
BOUNDS = {
    "width": (1, 256),
    "n_blocks": (1, 64),
    "depth": (1, 7),
    "canvas": (16, 1024),
    "binning": (1, 64),
    "disc_width": (1, 256),
}
#: the largest network we build (the shipped ones have 0.49 M and 0.99 M parameters)
MAX_PARAMETERS = 50_000_000
_MAX_CONFIG_BYTES = 1 << 20
_MAX_WEIGHTS_BYTES = 1 << 30


def _retrain(kind: str) -> str:
    return f"retrain it with 'xanestrack train {kind} --out DIR', or leave out the option to use the shipped model"


def read_model_config(model_dir, *, kind: str, required) -> dict:
    """``config.json`` of a model folder, each key of ``required`` present, an integer and within bounds."""
    d = Path(model_dir)
    path = d / "config.json"
    if not path.is_file():
        raise XanestrackError(
            f"{path}: missing; a {kind} model folder holds config.json and weights.pt: {_retrain(kind)}"
        )
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise XanestrackError(f"{path}: {path.stat().st_size} bytes is not a model configuration; {_retrain(kind)}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError as exc:
        raise XanestrackError(
            f"{path}: not valid JSON ({exc.args[0] if exc.args else exc}); {_retrain(kind)}"
        ) from None
    if not isinstance(cfg, dict):
        raise XanestrackError(f"{path}: not a model configuration (a JSON object is expected); {_retrain(kind)}")
    for key in required:
        if key not in cfg:
            raise XanestrackError(f"{path}: no '{key}'; {_retrain(kind)}")
    for key, (lo, hi) in BOUNDS.items():
        if key not in cfg:
            continue
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or int(v) != v:
            raise XanestrackError(f"{path}: '{key}' is {v!r}, not a whole number; {_retrain(kind)}")
        if not lo <= v <= hi:
            raise XanestrackError(f"{path}: '{key}' = {v:g} is outside {lo}-{hi}; {_retrain(kind)}")
        cfg[key] = int(v)
    if "canvas" in cfg and "depth" in cfg and cfg["canvas"] % (2 ** cfg["depth"]):
        raise XanestrackError(
            f"{path}: 'canvas' {cfg['canvas']} is not a multiple of 2^depth = {2 ** cfg['depth']}; {_retrain(kind)}"
        )
    return cfg


def check_model_size(build, *, path, kind: str) -> None:
    """Refuse a network over :data:`MAX_PARAMETERS`, counted on torch's meta device (no memory)."""
    import torch

    with torch.device("meta"):
        n = sum(p.numel() for p in build().parameters())
    if n > MAX_PARAMETERS:
        raise XanestrackError(
            f"{path}: the configured network has {n / 1e6:.0f} M parameters (at most {MAX_PARAMETERS / 1e6:.0f} M); {_retrain(kind)}"
        )


def load_weights(model_dir, *, kind: str):
    """``weights.pt`` of a model folder, read with ``weights_only=True``."""
    import pickle

    import torch

    path = Path(model_dir) / "weights.pt"
    if not path.is_file():
        raise XanestrackError(f"no trained {kind} in {Path(model_dir)}: run 'xanestrack train {kind}' first")
    size = path.stat().st_size
    if size == 0:
        raise XanestrackError(f"{path}: empty file (an interrupted copy or training?); {_retrain(kind)}")
    if size > _MAX_WEIGHTS_BYTES:
        raise XanestrackError(f"{path}: {size >> 20} MiB is far larger than a {kind} model; {_retrain(kind)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise XanestrackError(
            f"{path}: refused: the file holds Python objects besides tensors, which could run code when loaded; "
            f"only weights written by xanestrack are loaded: {_retrain(kind)}"
        ) from None
    except Exception as exc:  # truncated zip, not a torch file at all
        raise XanestrackError(f"{path}: not a readable weights file ({type(exc).__name__}); {_retrain(kind)}") from None


def load_state(module, state, *, path, kind: str) -> None:
    """``module.load_state_dict(state)``, refusing weights that do not fit the configured network."""
    if not isinstance(state, dict):
        raise XanestrackError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors; {_retrain(kind)}")
    try:
        module.load_state_dict(state)
    except Exception as exc:
        raise XanestrackError(
            f"{path}: weights do not fit the network described in config.json ({type(exc).__name__}): "
            f"the two files do not belong together; {_retrain(kind)}"
        ) from None


def torch_device(name: str = "cpu"):
    """The :class:`torch.device` for ``--device``: "cpu" (the default), "cuda" or "cuda:N".

    Raises
    ------
    XanestrackError
        For another name, or "cuda" where PyTorch sees no CUDA device (a CPU-only build, no
        GPU, or N beyond the devices present): said in one line, with the way back to the CPU.
    """
    import torch

    text = str(name).strip().lower()
    if text != "cpu" and not (text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
        raise XanestrackError(f"--device {name!r}: give 'cpu' (the default), 'cuda' or 'cuda:N'")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
        raise XanestrackError(
            f"--device {name}: PyTorch {torch.__version__} ({build}) has no CUDA device here; "
            "leave out --device to run on the CPU"
        )
    dev = torch.device(text)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise XanestrackError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev
