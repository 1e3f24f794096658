"""Decompression bombs for the pixel-limit tests: small files that claim huge images."""

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path, width: int = 20000, height: int = 20000) -> int:
    """A valid 1-bit greyscale PNG of width x height white pixels (about 60 KB for 20000 x 20000); returns its size.

    Written row by row through one zlib stream, so it costs a few MB of memory and about a second.
    """
    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 500) for _ in range(height // 500)]
    parts += [compressor.compress(row * (height % 500)), compressor.flush()]
    data = b"".join(parts)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)))
        f.write(_chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return 8 + 25 + 12 + len(data) + 12


def gif_header(width: int, height: int) -> bytes:
    """The start of a GIF89a claiming a width x height logical screen (enough for the size check)."""
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x00" * 32


def bmp_header(width: int, height: int) -> bytes:
    """A BITMAPFILEHEADER + BITMAPINFOHEADER claiming width x height (height negative: top-down)."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40, 0, 0, 14 + 40) + info


def write_gif_bomb(path, frames: int = 200, width: int = 2000, height: int = 2000) -> int:
    """A valid animated GIF of `frames` one-colour frames of width x height (about 1 MB for the defaults), whose
    header screen size is within the pixel limit but whose frames together are not; returns its size."""
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((height, width), i % 256, np.uint8), "L").convert("P") for i in range(frames)]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=10)
    with open(path, "rb") as f:
        return len(f.read())
