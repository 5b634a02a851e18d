"""What an uploaded file really is, decided from its bytes alone.

The filename and the declared ``Content-Type`` are never believed: a PDF
renamed ``photo.png`` is a PDF. Accepted kinds are ``png``, ``jpeg``,
``webp``, ``gif`` (its first frame is what a slide shows), ``pdf`` and
``pptx``; SVG (scripts, external references: no safe rasteriser here) and
anything else are refused with a message that says why.

Nothing here decodes a whole image or inflates a whole archive: images are
checked from their headers (Pillow's decompression-bomb guard on, and a
smaller cap of our own) plus ``verify()``; a PPTX is judged from its zip
directory and two small entries, its declared uncompressed total bounded
before anything is inflated.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from dataclasses import dataclass
from typing import IO, Literal

Kind = Literal["png", "jpeg", "webp", "gif", "pdf", "pptx"]
IMAGE_KINDS: frozenset[str] = frozenset({"png", "jpeg", "webp", "gif"})
DOCUMENT_KINDS: frozenset[str] = frozenset({"pdf", "pptx"})

#: The media type each kind is served with.
MEDIA_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "pdf": "application/pdf",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}

#: A PPTX whose entries together would inflate past this is refused unread
#: (a zip bomb declares gigabytes in a few kilobytes).
MAX_PPTX_UNCOMPRESSED = 1024 * 1024 * 1024
#: ... as is one with more entries than any real deck has.
MAX_PPTX_ENTRIES = 20_000
#: ``[Content_Types].xml`` is a short list; more is not a real deck.
MAX_CONTENT_TYPES_BYTES = 1024 * 1024

_PRESENTATION_TYPES = re.compile(
    rb"application/vnd\.openxmlformats-officedocument\.presentationml\."
    rb"(?:presentation|slideshow|template)\.main\+xml"
)
_SLIDE_ENTRY = re.compile(r"ppt/slides/slide[0-9]+\.xml")
_PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}


class AssetRefused(ValueError):
    """The bytes are not an asset slidefarm accepts; ``code`` says which rule."""

    def __init__(self, message: str, code: str = "unsupported_asset_type") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Sniffed:
    """What the bytes are: their kind and, where cheap, their size in pixels or pages."""

    kind: Kind
    width: int | None = None
    height: int | None = None
    pages: int | None = None


def sniff(data: bytes | IO[bytes], *, max_pixels: int) -> Sniffed:
    """The kind of ``data`` (bytes, or a seekable binary file read from its
    start); :class:`AssetRefused` if it is not one slidefarm accepts, or is an
    image of more than ``max_pixels`` pixels."""
    stream: IO[bytes] = io.BytesIO(data) if isinstance(data, bytes) else data
    stream.seek(0)
    head = stream.read(4096)
    stream.seek(0)
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return _image(stream, max_pixels)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return _image(stream, max_pixels)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _image(stream, max_pixels)
    if head.startswith(b"%PDF-"):
        return Sniffed("pdf")
    if head.startswith(b"PK\x03\x04"):
        return _pptx(stream)
    if _looks_like_svg(head):
        raise AssetRefused(
            "SVG is not accepted: it can carry scripts and external references, "
            "and no safe rasteriser is configured; upload a PNG instead"
        )
    raise AssetRefused(
        "the file is not a PNG, JPEG, WebP, GIF, PDF or PPTX (judged from its bytes, "
        "not its name or declared type)"
    )


def _looks_like_svg(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<?xml", b"<svg", b"<!doctype svg", b"<!--")) and b"<svg" in text


def _image(stream: IO[bytes], max_pixels: int) -> Sniffed:
    # Imported here: an API process loads Pillow on its first image upload,
    # not at start-up (it stays a process without the renderer's libraries).
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Past Image.MAX_IMAGE_PIXELS Pillow only warns (it raises at
            # twice that): a warning is a refusal here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # open() reads the header only; the size is known without decoding.
            with Image.open(stream) as image:
                width, height = image.size
                kind = _PILLOW_FORMATS.get(image.format or "")
                if kind is not None and width * height <= max_pixels:
                    image.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise AssetRefused(
            f"the image is refused as a decompression bomb: {error}", "asset_too_many_pixels"
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise AssetRefused(
            f"the image is damaged or truncated: {error}", "invalid_asset"
        ) from error
    if kind is None:
        raise AssetRefused("the image format is not accepted")
    if width * height > max_pixels:
        raise AssetRefused(
            f"the image has {width}x{height} = {width * height} pixels, more than the "
            f"{max_pixels} allowed (SLIDEFARM_MAX_ASSET_PIXELS)",
            "asset_too_many_pixels",
        )
    return Sniffed(kind, width, height)  # type: ignore[arg-type]


def _pptx(stream: IO[bytes]) -> Sniffed:
    try:
        with zipfile.ZipFile(stream) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_PPTX_ENTRIES:
                raise AssetRefused(
                    f"the archive has {len(entries)} entries, more than {MAX_PPTX_ENTRIES}",
                    "invalid_asset",
                )
            declared = sum(info.file_size for info in entries)
            if declared > MAX_PPTX_UNCOMPRESSED:
                raise AssetRefused(
                    f"the archive would inflate to {declared} bytes, more than "
                    f"{MAX_PPTX_UNCOMPRESSED}: refused as a zip bomb",
                    "invalid_asset",
                )
            names = {info.filename for info in entries}
            if "[Content_Types].xml" not in names or "ppt/presentation.xml" not in names:
                raise AssetRefused(
                    "the zip is not a PowerPoint presentation (PPTX): it lacks "
                    "[Content_Types].xml or ppt/presentation.xml"
                )
            # zipfile stops at the declared size, so a lying entry cannot
            # inflate past the bound read here.
            with archive.open("[Content_Types].xml") as entry:
                types = entry.read(MAX_CONTENT_TYPES_BYTES + 1)
            if len(types) > MAX_CONTENT_TYPES_BYTES or not _PRESENTATION_TYPES.search(types):
                raise AssetRefused(
                    "the zip is not a PowerPoint presentation (PPTX): its "
                    "[Content_Types].xml declares no presentation"
                )
            slides = sum(1 for name in names if _SLIDE_ENTRY.fullmatch(name))
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        NotImplementedError,
        RuntimeError,
    ) as error:
        raise AssetRefused(f"the zip archive is damaged: {error}", "invalid_asset") from error
    return Sniffed("pptx", pages=slides)
