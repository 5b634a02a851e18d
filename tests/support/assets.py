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


def zip_bomb_content_types() -> bytes:
    """A ``[Content_Types].xml`` that declares a presentation (and nothing else)."""
    return (
        b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
        b'content-types"><Override PartName="/ppt/presentation.xml" ContentType="application/'
        b'vnd.openxmlformats-officedocument.presentationml.presentation.main+xml"/></Types>'
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
    content_types = zip_bomb_content_types()
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


# -- documents with known contents, and hostile ones ---------------------------

#: The colour of the marks drawn at known places in :func:`pdf_with_rectangle`
#: and :func:`pptx_with_content` (pure enough to find again in a rendered slide).
MARK = (220, 20, 60)


def pdf_with_rectangle(
    page: tuple[int, int] = (800, 600), box: tuple[int, int, int, int] = (100, 150, 300, 350)
) -> bytes:
    """One white page of ``page`` points with a :data:`MARK` rectangle at
    ``box`` (left, top, right, bottom, in points from the top left)."""
    image = Image.new("RGB", page, "white")
    image.paste(MARK, box)
    out = io.BytesIO()
    image.save(out, "PDF", resolution=72.0)  # one pixel is one point
    return out.getvalue()


def raw_pdf(pages: list[bytes], *, media_box: str = "0 0 612 792", extra: bytes = b"") -> bytes:
    """A PDF written by hand: one page per content stream in ``pages``
    (an empty list: a page tree of no pages), ``extra`` added to the catalog."""
    objects: list[bytes] = []
    n_pages = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R " + extra + b" >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, content in enumerate(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [{media_box}] /Contents {4 + 2 * i} 0 R "
            "/Resources << >> >>".encode()
        )
        objects.append(
            f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream"
        )
    return _write_pdf(objects)


def _write_pdf(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    start = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R ".encode()
        + trailer_extra
        + f" >>\nstartxref\n{start}\n%%EOF\n".encode()
    )
    return out.getvalue()


def encrypted_pdf() -> bytes:
    """A PDF under the standard security handler whose user password is not
    empty: no reader opens it without the password."""
    content = b"0 0 1 rg 10 10 100 100 re f"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R >>",
        f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream",
        b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 "
        b"/O <" + b"6c" * 32 + b"> /U <" + b"5a" * 32 + b"> >>",
    ]
    return _write_pdf(
        objects, b"/Encrypt 5 0 R /ID [<0123456789abcdef0123456789abcdef> <0123456789abcdef>]"
    )


def pdf_of_pages(count: int) -> bytes:
    """A PDF of ``count`` small empty pages (10,000 is about a megabyte)."""
    return raw_pdf([b""] * count, media_box="0 0 100 100")


def huge_page_pdf() -> bytes:
    """One page of 14,400 x 14,400 points (PDF's largest), filled: at 72 dpi
    that is 207 million pixels, which a renderer must never allocate."""
    return raw_pdf([b"1 0 0 rg 0 0 14400 14400 re f"], media_box="0 0 14400 14400")


def active_pdf() -> bytes:
    """A PDF that runs JavaScript when opened and links out: a link
    annotation to an https URL and an ``/OpenAction`` script (a viewer's
    business; a renderer draws the page only)."""
    content = b"0 0.5 0 rg 50 50 200 100 re f"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R "
        b"/Names << /JavaScript << /Names [(x) 5 0 R] >> >> >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R /Annots [6 0 R] >>",
        f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream",
        b"<< /S /JavaScript /JS (app.launchURL\\('https://example.com/x', true\\);) >>",
        b"<< /Type /Annot /Subtype /Link /Rect [50 50 250 150] /Border [0 0 0] "
        b"/A << /S /URI /URI (https://example.com/) >> >>",
    ]
    return _write_pdf(objects)


def pptx_with_content(pages: int = 2) -> bytes:
    """A 4:3 PPTX (10 x 7.5 in) of ``pages`` slides, each titled ``Title N``
    with a :data:`MARK` picture 3 x 2 in at (1 in, 1 in) from the top left
    and the speaker notes ``Notes of slide N``."""
    from pptx.util import Inches

    deck = Presentation()
    picture = io.BytesIO()
    Image.new("RGB", (300, 200), MARK).save(picture, "PNG")
    for n in range(1, pages + 1):
        slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
        slide.shapes.title.text = f"Title {n}"
        picture.seek(0)
        slide.shapes.add_picture(picture, Inches(1), Inches(1), Inches(3), Inches(2))
        slide.notes_slide.notes_text_frame.text = f"Notes of slide {n}"
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


#: ffmpeg arguments for each audio kind: (output format, codec).
AUDIO_FORMATS = {
    "wav": ("wav", "pcm_s16le"),
    "mp3": ("mp3", "libmp3lame"),
    "m4a": ("ipod", "aac"),
    "ogg": ("ogg", "libopus"),
    "vorbis": ("ogg", "libvorbis"),
    "flac": ("flac", "flac"),
}


def audio_bytes(kind: str, seconds: float = 1.0) -> bytes:
    """A tone of ``seconds`` encoded as ``kind`` (a key of AUDIO_FORMATS) by
    the bundled ffmpeg."""
    import subprocess
    import tempfile
    from pathlib import Path

    import imageio_ffmpeg

    fmt, codec = AUDIO_FORMATS[kind]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "a"
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-v", "error", "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                "-c:a", codec, "-f", fmt, str(out),
            ],
            check=True,
        )  # fmt: skip
        return out.read_bytes()


def video_mp4_bytes() -> bytes:
    """A one-second MP4 with a picture and a sound track (not an audio file)."""
    import subprocess
    import tempfile
    from pathlib import Path

    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "v.mp4"
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error",
                "-f", "lavfi", "-i", "color=c=red:s=64x48:d=1",
                "-f", "lavfi", "-i", "sine=duration=1",
                "-c:v", "libx264", "-c:a", "aac", "-shortest", str(out),
            ],
            check=True,
        )  # fmt: skip
        return out.read_bytes()
