"""A reader for the 16-bit RGBA PNGs the worker writes, for the tests.

Pillow reads such a file as 8-bit (it keeps each sample's high byte), which checks the
file's structure but not its precision; this reader returns the full 16-bit samples. It
follows the PNG specification (chunk CRCs, all five row filters), so it also reads 16-bit
PNGs written by other encoders.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def read_png16(data: bytes) -> np.ndarray:
    """(H, W, 4) uint16 samples of a 16-bit RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, header, idat = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, colour, interlace) == (16, 6, 0), (depth, colour, interlace)
    bpp, stride = 8, width * 8
    raw = zlib.decompress(idat)
    rows = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], np.frombuffer(raw[start + 1 : start + 1 + stride], np.uint8)
        out = line.astype(np.int64)
        if kind == 1:
            for i in range(bpp, stride):
                out[i] = (out[i] + out[i - bpp]) & 0xFF
        elif kind == 2:
            out = (out + previous) & 0xFF
        elif kind == 3:
            for i in range(stride):
                left = out[i - bpp] if i >= bpp else 0
                out[i] = (out[i] + (left + previous[i]) // 2) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                out[i] = (out[i] + pred) & 0xFF
        else:
            assert kind == 0, f"unknown filter {kind}"
        rows[y] = out
        previous = out
    return rows.view(">u2").reshape(height, width, 4).astype(np.uint16)
