"""Property tests of every reader and of the energies parser: whatever the input, the result is a
valid Stack (or file contents) or a one-line XanestrackError naming the file; never another
exception, never a traceback (issue 11). Few examples each, so the whole file runs in seconds;
XANESTRACK_FUZZ_EXAMPLES=2000 searches harder."""

import os
import shutil

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import shared_data
from xanestrack.errors import XanestrackError
from xanestrack.io import read_stack
from xanestrack.io.tiff import read_energies_file

FUZZ = settings(
    max_examples=int(os.environ.get("XANESTRACK_FUZZ_EXAMPLES", 100)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _user_error(exc, *names):
    msg = str(exc)
    event("refused: " + msg.split(": ", 1)[-1][:50])
    assert isinstance(exc, XanestrackError), f"{type(exc).__name__}: {msg}"
    assert "\n" not in msg
    assert any(n in msg for n in names), msg


def _valid(stack, n_frames=None):
    event("read")
    e = stack.energies_ev
    assert stack.od.ndim == 3 and stack.od.dtype == np.float32 and stack.od.shape[1] >= 8 and stack.od.shape[2] >= 8
    assert np.all(np.isfinite(e)) and np.all(np.diff(e) > 0) and e.min() >= 100 and e.max() <= 200_000
    if n_frames is not None:
        assert stack.od.shape[0] == n_frames == e.size


_TOKENS = st.sampled_from(
    [
        "8333",
        "8340.5",
        "8.333",
        "8.3405",
        "-8333",
        "0",
        "nan",
        "inf",
        "1e400",
        "1e3",
        "abc",
        "energy",
        "energy (eV)",
        "keV",
        "frame",
        "#",
        ",",
        ";",
        "\t",
        " ",
        "8,333",
        "\u221e",
        "\x00",
        "8333\r",
    ]
)
_TEXT = st.one_of(
    st.lists(st.floats(8000, 9000), min_size=1, max_size=8, unique=True).map(
        lambda v: "energy\n" + "\n".join(f"{x:.3f}" for x in sorted(v))
    ),
    st.lists(st.lists(_TOKENS, max_size=4).map(" ".join), max_size=10).map("\n".join),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=8).map(
        lambda v: "\n".join(map(str, v))
    ),
    st.text(max_size=120),
)


@FUZZ
@given(text=_TEXT)
def test_fuzz_energies_parser(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("en") / "energies.txt"
    p.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    try:
        e = read_energies_file(p)
    except Exception as exc:
        _user_error(exc, "energies.txt")
    else:
        assert e.size >= 1 and np.all(np.isfinite(e)) and e.min() >= 100 and e.max() <= 200_000


# plausible choices repeated, so that reads succeed often enough to be checked too
_DTYPES = st.sampled_from(["u2", "u2", "f4", "f4", "i1", "u1", "f8", "c8", "?"])
_SIZES = st.sampled_from([8, 12, 16, 16, 0, 4])


def _array(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    if dtype.kind == "c":
        return (rng.random(shape) + 1j * rng.random(shape)).astype(dtype)
    if dtype.kind == "f":
        return rng.choice([rng.uniform(0, 2, shape), rng.uniform(500, 2000, shape), rng.normal(0, 1, shape)]).astype(
            dtype
        )
    hi = min(np.iinfo(dtype).max, 3000)
    return rng.integers(0, hi, shape, endpoint=True).astype(dtype)


_ENERGIES = st.sampled_from(
    [None]
    + ["ramp_kev", "ramp_ev"] * 4
    + ["negative", "mixed", "nan", "empty", "reversed", "duplicate", "text", "group"]
)


def _energies(kind, n):
    ramp = np.linspace(8300.0, 8400.0, max(n, 1))
    return {
        "ramp_kev": ramp / 1000,
        "ramp_ev": ramp,
        "negative": -ramp,
        "mixed": np.r_[ramp[:1] / 1000, ramp[1:]],
        "nan": np.r_[np.nan, ramp[1:]],
        "empty": np.zeros(0),
        "reversed": ramp[::-1],
        "duplicate": np.r_[ramp[:1], ramp[:-1]],
    }.get(kind)


@FUZZ
@given(
    layout=st.sampled_from(["fxi", "dx"]),
    n=st.integers(0, 4),
    rows=_SIZES,
    cols=_SIZES,
    dtype=_DTYPES,
    n_flats=st.sampled_from([None, 0, 1, 2, "n", "n", "n", "bad"]),
    dark=st.booleans(),
    energies=_ENERGIES,
    data_kind=st.sampled_from(["dataset"] * 6 + ["group", "loop", "2d", "4d"]),
    values=st.sampled_from(["auto", "auto", "od", "transmission", "counts", "nonsense"]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_hdf5_reader(
    tmp_path_factory, layout, n, rows, cols, dtype, n_flats, dark, energies, data_kind, values, seed
):
    rng = np.random.default_rng(seed)
    keys = (
        ("img_xanes", "img_bkg", "img_dark", "X_eng")
        if layout == "fxi"
        else tuple(f"exchange/{k}" for k in ("data", "data_white", "data_dark", "energy"))
    )
    p = tmp_path_factory.mktemp("h5") / "scan.h5"
    shape = {"2d": (rows, cols), "4d": (2, n, rows, cols)}.get(data_kind, (n, rows, cols))
    with h5py.File(p, "w") as f:
        if data_kind == "group":
            f.create_group(keys[0])
        elif data_kind == "loop":
            f[keys[0]] = h5py.SoftLink("/loop_b")
            f["loop_b"] = h5py.SoftLink("/" + keys[0])
        else:
            f[keys[0]] = _array(rng, shape, dtype)
        if n_flats is not None:
            m = n if n_flats == "n" else (1 if n_flats == "bad" else n_flats)
            f[keys[1]] = _array(rng, (m, rows + (3 if n_flats == "bad" else 0), cols), "f4") + 1000
        if dark:
            f[keys[2]] = np.full((1, rows, cols), 10.0, np.float32)
        if energies == "text":
            f[keys[3]] = np.array([b"8333"] * max(n, 1))
        elif energies == "group":
            f.create_group(keys[3])
        elif energies is not None:
            f[keys[3]] = _energies(energies, n if data_kind != "2d" else 1)
    try:
        stack = read_stack(p, values=values)
    except Exception as exc:
        _user_error(exc, "scan.h5", "`values`")
    else:
        _valid(stack)


@FUZZ
@given(
    n=st.integers(1, 4),
    rows=_SIZES,
    cols=_SIZES,
    dtype=st.sampled_from(["u2", "f4", "u1", "i2", "f8", "c8", "?", "rgb"]),
    n_energies=st.sampled_from([0, 1, 2, 3, 4, 5, "n", "n", "n"]),
    n_flats=st.sampled_from([None, 1, 2, "n", "n"]),
    darks=st.booleans(),
    values=st.sampled_from(["auto", "od", "od", "transmission"]),
    cut=st.sampled_from([None, None, None, 0.5, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_tiff_reader(tmp_path_factory, n, rows, cols, dtype, n_energies, n_flats, darks, values, cut, seed):
    rng = np.random.default_rng(seed)
    d = tmp_path_factory.mktemp("tif")
    if dtype == "rgb":
        tifffile.imwrite(
            d / "s.tif", rng.integers(0, 255, (max(rows, 1), max(cols, 1), 3), dtype=np.uint8), photometric="rgb"
        )
    else:
        tifffile.imwrite(d / "s.tif", _array(rng, (n, max(rows, 1), max(cols, 1)), dtype))
    if cut is not None:
        data = (d / "s.tif").read_bytes()
        (d / "s.tif").write_bytes(data[: int(len(data) * cut)])
    (d / "e.txt").write_text(
        "\n".join(f"{e:.2f}" for e in np.linspace(8300, 8400, n if n_energies == "n" else n_energies))
    )
    kw = dict(energies=d / "e.txt", values=values)
    if n_flats is not None:
        tifffile.imwrite(
            d / "f.tif", _array(rng, (n if n_flats == "n" else n_flats, max(rows, 1), max(cols, 1)), "f4") + 1000
        )
        kw["flats"] = d / "f.tif"
    if darks:
        tifffile.imwrite(d / "d.tif", np.full((max(rows, 1), max(cols, 1)), 5.0, np.float32))
        kw["darks"] = d / "d.tif"
    try:
        stack = read_stack(d / "s.tif", **kw)
    except Exception as exc:
        _user_error(exc, "s.tif", "f.tif", "d.tif", "e.txt", "`values`")
    else:
        _valid(stack, n)


_U32 = st.one_of(st.sampled_from([0, 1, 5, 10, 512, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
_F32 = st.sampled_from([0.0, -1.0, 1.0, 8333.0, 8.333, float("nan"), float("inf"), 1e30])


@pytest.fixture(scope="module")
def xrm_source():
    return shared_data("zeiss", "test_chip00.xrm")


@settings(
    max_examples=int(os.environ.get("XANESTRACK_FUZZ_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    width=_U32,
    height=_U32,
    dtype=_U32,
    n_images=_U32,
    exp=_F32,
    energy=_F32,
    which=st.sets(st.sampled_from(["w", "h", "t", "n", "x", "e"]), min_size=1),
)
def test_fuzz_xrm_metadata(tmp_path_factory, xrm_source, width, height, dtype, n_images, exp, energy, which):
    import olefile

    from xanestrack.io.xrm import read_xrm

    p = tmp_path_factory.mktemp("xrm") / "f_08340.0_eV.xrm"
    shutil.copy(xrm_source, p)
    streams = {
        "w": ("ImageInfo/ImageWidth", np.uint32(width)),
        "h": ("ImageInfo/ImageHeight", np.uint32(height)),
        "t": ("ImageInfo/DataType", np.uint32(dtype)),
        "n": ("ImageInfo/NoOfImages", np.uint32(n_images)),
        "x": ("ImageInfo/ExpTimes", np.float32(exp)),
        "e": ("ImageInfo/Energy", np.float32(energy)),
    }
    with olefile.OleFileIO(str(p), write_mode=True) as o:
        for k in sorted(which):
            name, value = streams[k]
            if o.exists(name):
                size = len(o.openstream(name).read())
                o.write_stream(name, np.full(size // value.itemsize, value).tobytes())
    try:
        x = read_xrm(p)
    except Exception as exc:
        _user_error(exc, p.name)
        return
    assert x.images.ndim == 3 and x.images.shape[1] * x.images.shape[2] > 0
    try:
        stack = read_stack(p)
    except Exception as exc:
        _user_error(exc, p.name, "reference")
    else:
        _valid(stack)


@FUZZ
@given(
    header=st.binary(min_size=0, max_size=600), sector_shift=st.sampled_from([9, 12, 7, 30]), tail=st.integers(0, 5000)
)
def test_fuzz_ole_container(tmp_path_factory, header, sector_shift, tail):
    from xanestrack.io.ole import MAGIC, OleFile

    body = bytearray(MAGIC + header.ljust(504, b"\0")) + bytes(tail)
    body[0x1E:0x20] = int(sector_shift).to_bytes(2, "little")
    body[0x20:0x22] = (6).to_bytes(2, "little")
    p = tmp_path_factory.mktemp("ole") / "c.txrm"
    p.write_bytes(bytes(body))
    try:
        o = OleFile(p)
    except Exception as exc:
        _user_error(exc, "c.txrm")
    else:
        for name in list(o.paths)[:5]:
            try:
                o.read(name)
            except Exception as exc:
                _user_error(exc, "c.txrm")
