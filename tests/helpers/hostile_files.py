"""Files built to attack stage 1: headers that claim huge sizes, formats behind a wrong name."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

H, W = 20, 30
EPS_BYTES = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 30 20\n%%EndComments\nshowpage\n%%EOF\n"


def rgb(height: int = H, width: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_header_only(width: int, height: int, colour_type: int = 2) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb);
    ``colour_type`` 2 is RGB, 0 greyscale."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def npy_header_only(shape: tuple[int, ...], dtype: str = "|u1", body: bytes = b"\0" * 64) -> bytes:
    """A ``.npy`` file of a few bytes whose header claims ``shape`` but that holds only
    ``body`` as data (200000x200000 uint8 made numpy allocate 37 GiB before its read failed)."""
    buffer = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + body
