"""Files to upload, each made here: images with Pillow, a PDF with Pillow's
PDF writer, a PPTX with python-pptx, and the hostile ones (a PNG that
claims billions of pixels, a zip bomb dressed as a PPTX, an SVG)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image
from pptx import Presentation


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48), color: str = "teal") -> bytes:
    """A small image in Pillow format ``fmt`` (``PNG``, ``JPEG``, ``WEBP``, ``GIF``)."""
    out = io.BytesIO()
    first = Image.new("RGB", size, color)
    if fmt == "GIF":  # two frames: the first is the one that counts
        first.save(out, "GIF", save_all=True, append_images=[Image.new("RGB", size, "red")])
    else:
        first.save(out, fmt)
    return out.getvalue()


def pdf_bytes(pages: int = 2) -> bytes:
    """A PDF of ``pages`` pages, written by Pillow."""
    out = io.BytesIO()
    images = [Image.new("RGB", (200, 150), c) for c in ["white", "black", "blue"][:pages]]
    images[0].save(out, "PDF", save_all=True, append_images=images[1:])
    return out.getvalue()


def pptx_bytes(slides: int = 2) -> bytes:
    """A PPTX deck of ``slides`` titled slides, written by python-pptx."""
    deck = Presentation()
    for n in range(slides):
        slide = deck.slides.add_slide(deck.slide_layouts[0])
        slide.shapes.title.text = f"Slide {n + 1}"
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def svg_bytes() -> bytes:
    """An SVG that runs a script when rendered by a browser."""
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
        b'height="10"><script>alert(1)</script><rect width="10" height="10"/></svg>'
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header claims
    ``width`` x ``height`` pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", rows)
        + _chunk(b"IEND", b"")
    )


def zip_bomb_pptx(entries: int = 4, mib_each: int = 512) -> bytes:
    """A PPTX-shaped zip (``[Content_Types].xml`` declaring a presentation,
    ``ppt/presentation.xml``) plus ``entries`` members of ``mib_each`` MiB of
    zeros each: about 1 MB on disk, gigabytes inflated. Built from one
    self-contained deflate block repeated, so making it costs no inflating."""
    pack = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = pack.compress(b"\x00" * (1 << 20)) + pack.flush(zlib.Z_FULL_FLUSH)
    stream = block * mib_each + b"\x03\x00"  # an empty final block ends it
    crc = 0
    mib = b"\x00" * (1 << 20)
    for _ in range(mib_each):
        crc = zlib.crc32(mib, crc)
    size = mib_each << 20
    content_types = (
        b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
        b'content-types"><Override PartName="/ppt/presentation.xml" ContentType="application/'
        b'vnd.openxmlformats-officedocument.presentationml.presentation.main+xml"/></Types>'
    )
    members: list[tuple[str, bytes, int, int, int]] = [
        ("[Content_Types].xml", content_types, 0, zlib.crc32(content_types), len(content_types)),
        ("ppt/presentation.xml", b"<p/>", 0, zlib.crc32(b"<p/>"), 4),
    ]
    members += [(f"ppt/media/zero{n}.bin", stream, 8, crc, size) for n in range(entries)]
    out = io.BytesIO()
    central = b""
    for name, data, method, member_crc, raw_size in members:
        encoded = name.encode()
        offset = out.tell()
        fields = struct.pack(
            "<HHHHHIIIHH", 20, 0, method, 0, 0x21, member_crc, len(data), raw_size, len(encoded), 0
        )
        out.write(b"PK\x03\x04" + fields + encoded + data)
        central += (
            b"PK\x01\x02"
            + struct.pack("<H", 20)
            + fields
            + struct.pack("<HHHII", 0, 0, 0, 0, offset)
            + encoded
        )
    start = out.tell()
    out.write(central)
    out.write(
        b"PK\x05\x06"
        + struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(central), start, 0)
    )
    return out.getvalue()
