"""Small PNG pictures for the browser tests, standing in for articles' photos (no Pillow needed)."""

from __future__ import annotations

import struct
import zlib


def gradient_png(width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> bytes:
    """An RGB PNG fading from ``top`` to ``bottom``: a real, decodable image of that size."""
    rows = []
    for y in range(height):
        share = y / max(1, height - 1)
        colour = bytes(round(a + (b - a) * share) for a, b in zip(top, bottom, strict=True))
        rows.append(b"\x00" + colour * width)  # filter type 0, then the row's pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
