"""A minimal read-only OLE2 (compound document) reader for Xradia files.

Why not olefile: olefile builds a Python object per directory entry and reads
streams sector by sector; an .xrm has ~400-700 entries, which made parsing 12x
slower than reading the bytes from disk (benchmarks/bench_read_xrm.py). Here the
whole file is read once, the FAT and directory are numpy arrays, and a stream whose
sectors are contiguous (the images, in practice) is one slice. olefile stays the
oracle of the tests.

Format: [MS-CFB] (Microsoft Compound File Binary File Format).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import XanestrackError

__all__ = ["OleFile", "OleError"]

MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")
ENDOFCHAIN = 0xFFFFFFFE
FREESECT = 0xFFFFFFFF
NOSTREAM = 0xFFFFFFFF

_DIR = np.dtype(
    [
        ("name", "V64"),
        ("name_len", "<u2"),
        ("type", "u1"),
        ("color", "u1"),
        ("left", "<u4"),
        ("right", "<u4"),
        ("child", "<u4"),
        ("clsid", "V16"),
        ("state", "<u4"),
        ("times", "V16"),
        ("start", "<u4"),
        ("size", "<u8"),
    ]
)


class OleError(XanestrackError):
    """The file is not a readable compound document (named in the message)."""


class OleFile:
    """Streams of a compound document, by path ``"Storage/Stream"``."""

    def __init__(self, path):
        self.path = Path(path)
        data = self.path.read_bytes()
        if len(data) < 512 or data[:8] != MAGIC:
            raise OleError(f"{self.path}: not an OLE2 compound document")
        self._data = data
        hdr = np.frombuffer(data, "<u2", 2, 0x1E)
        if int(hdr[0]) not in (9, 12) or int(hdr[1]) != 6:
            raise OleError(f"{self.path}: damaged header (sector shift {int(hdr[0])}, mini sector shift {int(hdr[1])})")
        self.sector_size = 1 << int(hdr[0])
        self.mini_size = 1 << int(hdr[1])
        h32 = np.frombuffer(data, "<u4", 10, 0x2C)
        n_fat, first_dir = int(h32[0]), int(h32[1])
        self.mini_cutoff = int(h32[3])
        first_minifat, n_minifat = int(h32[4]), int(h32[5])
        first_difat, n_difat = int(h32[6]), int(h32[7])
        difat = list(np.frombuffer(data, "<u4", 109, 0x4C))
        per = self.sector_size // 4
        s = first_difat
        for _ in range(n_difat):
            if s in (ENDOFCHAIN, FREESECT):
                break
            block = self._sector_array(s)
            difat += list(block[: per - 1])
            s = int(block[per - 1])
        fat_sectors = [int(x) for x in difat[:n_fat] if x not in (FREESECT, ENDOFCHAIN)]
        self.fat = np.concatenate([self._sector_array(x) for x in fat_sectors]) if fat_sectors else np.zeros(0, "<u4")
        # the last sector in use sets the file's size: a shorter file was cut (an interrupted copy)
        used = np.flatnonzero(self.fat != FREESECT)
        self.expected_size = int((used[-1] + 2) * self.sector_size) if used.size else len(data)
        self.truncated = len(data) < self.expected_size
        dir_bytes = self._read_chain(first_dir, None, self.fat, self.sector_size, self._sector_offset)
        n = len(dir_bytes) // 128
        self.dir = np.frombuffer(dir_bytes[: n * 128], _DIR)
        if n == 0 or self.dir["type"][0] != 5:
            raise OleError(f"{self.path}: no root directory entry (truncated or damaged)")
        self.minifat = (
            np.frombuffer(self._read_chain(first_minifat, None, self.fat, self.sector_size, self._sector_offset), "<u4")
            if n_minifat and first_minifat not in (ENDOFCHAIN, FREESECT)
            else np.zeros(0, "<u4")
        )
        root = self.dir[0]
        self._ministream = (
            self._read_chain(int(root["start"]), int(root["size"]), self.fat, self.sector_size, self._sector_offset)
            if root["size"]
            else b""
        )
        self.paths = {}
        self._walk(int(root["child"]), "")

    # -- low level
    def _sector_offset(self, s):
        return (s + 1) * self.sector_size

    def _sector_array(self, s):
        off = self._sector_offset(s)
        if off + self.sector_size > len(self._data):
            raise OleError(f"{self.path}: sector {s} beyond the end of the file: truncated file")
        return np.frombuffer(self._data, "<u4", self.sector_size // 4, off)

    def _read_chain(self, start, size, fat, ssize, offset_of, source=None, partial=False):
        source = self._data if source is None else source
        chain = []
        s = start
        limit = len(fat)
        while s != ENDOFCHAIN:
            if s >= limit or len(chain) > limit:
                if partial and chain:
                    break
                raise OleError(f"{self.path}: broken sector chain (truncated or damaged file)")
            chain.append(s)
            s = int(fat[s])
        if not chain:
            return b""
        chain = np.asarray(chain)
        need = len(chain) * ssize if size is None else size
        if np.all(np.diff(chain) == 1):
            off = offset_of(int(chain[0]))
            out = source[off : off + need]
        else:
            out = b"".join(source[offset_of(int(c)) : offset_of(int(c)) + ssize] for c in chain)[:need]
        if len(out) < need and not partial:
            raise OleError(f"{self.path}: stream data beyond the end of the file: truncated file")
        return out

    def _walk(self, idx, prefix, depth=0):
        stack = [idx]
        seen = 0
        while stack:
            i = stack.pop()
            if i == NOSTREAM or i >= len(self.dir):
                continue
            seen += 1
            if seen > len(self.dir) or depth > 32:
                raise OleError(f"{self.path}: directory tree loops (damaged file)")
            e = self.dir[i]
            nl = int(e["name_len"])
            name = bytes(e["name"])[: max(nl - 2, 0)].decode("utf-16-le", errors="replace")
            path = f"{prefix}{name}"
            if e["type"] == 2:
                self.paths[path] = i
            elif e["type"] == 1:
                self._walk(int(e["child"]), path + "/", depth + 1)
            stack.append(int(e["left"]))
            stack.append(int(e["right"]))

    # -- public
    def exists(self, path: str) -> bool:
        return path in self.paths

    def get_size(self, path: str) -> int:
        return int(self.dir[self.paths[path]]["size"])

    def read(self, path: str, *, partial: bool = False) -> bytes:
        """Bytes of a stream; past the end of the file: OleError, or what there is with ``partial``."""
        if path not in self.paths:
            raise KeyError(path)
        e = self.dir[self.paths[path]]
        size = int(e["size"]) if self.sector_size == 4096 else int(e["size"]) & 0xFFFFFFFF
        if size < self.mini_cutoff:
            ms = self.mini_size
            return self._read_chain(
                int(e["start"]), size, self.minifat, ms, lambda s: s * ms, self._ministream, partial
            )
        return self._read_chain(int(e["start"]), size, self.fat, self.sector_size, self._sector_offset, None, partial)
