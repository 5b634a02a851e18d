"""What an uploaded file really is, decided from its bytes alone.

The filename and the declared ``Content-Type`` are never believed: a PDF
renamed ``photo.png`` is a PDF. Accepted kinds are ``png``, ``jpeg``,
``webp``, ``gif`` (its first frame is what a slide shows), ``pdf``,
``pptx`` and audio: ``wav``, ``mp3``, ``m4a`` (an MP4 whose tracks are all
sound: an MP4 video is refused), ``ogg`` (Vorbis or Opus) and ``flac``; SVG
(scripts, external references: no safe rasteriser here) and anything else are
refused with a message that says why.

Nothing here decodes a whole image or inflates a whole archive: images are
checked from their headers (Pillow's decompression-bomb guard on, and a
smaller cap of our own) plus ``verify()``; a PPTX is judged from its zip
directory and two small entries, its declared uncompressed total bounded
before anything is inflated. Audio is judged from its container's headers
(no decoder runs in the API process).
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from dataclasses import dataclass
from typing import IO, Literal

Kind = Literal["png", "jpeg", "webp", "gif", "pdf", "pptx", "wav", "mp3", "m4a", "ogg", "flac"]
IMAGE_KINDS: frozenset[str] = frozenset({"png", "jpeg", "webp", "gif"})
DOCUMENT_KINDS: frozenset[str] = frozenset({"pdf", "pptx"})
AUDIO_KINDS: frozenset[str] = frozenset({"wav", "mp3", "m4a", "ogg", "flac"})

#: The media type each kind is served with.
MEDIA_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "pdf": "application/pdf",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
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
    audio = _audio(stream, head)
    if audio is not None:
        return audio
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
        "the file is not a PNG, JPEG, WebP, GIF, PDF, PPTX, WAV, MP3, M4A, Ogg (Vorbis, "
        "Opus) or FLAC (judged from its bytes, not its name or declared type)"
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


# -- audio ------------------------------------------------------------------
# Audio is judged from its container's headers only (no decoder, no ffmpeg in
# the API process): a WAV's fmt chunk, two consecutive MP3 frame headers, an
# MP4's track handlers, an Ogg stream's first packet, FLAC's STREAMINFO.

#: How much of an MP4's ``moov`` box is read to find its tracks' handlers.
MAX_MOOV_BYTES = 16 * 1024 * 1024
_M4A_BRANDS = frozenset({b"M4A ", b"M4B ", b"mp42", b"isom", b"mp41", b"iso2", b"dash"})
_MP3_BITRATES = {
    # (MPEG-1?) -> kbit/s by index (Layer III)
    True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _audio(stream: IO[bytes], head: bytes) -> Sniffed | None:
    """The audio kind of ``head`` (the stream's first bytes), None if it
    does not look like audio at all; :class:`AssetRefused` if it starts like
    an audio file but is damaged, truncated or (an MP4) holds video."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _wav(stream, head)
    if head[:4] == b"fLaC":
        if len(head) < 42 or head[4] & 0x7F != 0 or head[5:8] != b"\x00\x00\x22":
            raise AssetRefused("the FLAC file is damaged or truncated", "invalid_asset")
        return Sniffed("flac")
    if head[:4] == b"OggS":
        return _ogg(head)
    if head[4:8] == b"ftyp":
        return _m4a(stream, head)
    if head[:3] == b"ID3" or _mp3_frame(head, 0) is not None:
        return _mp3(stream, head)
    return None


def _wav(stream: IO[bytes], head: bytes) -> Sniffed:
    """A PCM WAV: its fmt chunk read, and its data chunk, when its size is
    declared, wholly present (a WAV says how long it is)."""
    at, fmt_seen = 12, False
    while at + 8 <= len(head):
        chunk, size = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")
        if chunk == b"fmt ":
            body = head[at + 8 : at + 8 + 16]
            if size < 16 or len(body) < 16:
                break
            fmt = int.from_bytes(body[0:2], "little")
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            if fmt not in (1, 3, 0xFFFE) or not channels or not rate:
                raise AssetRefused(
                    f"the WAV file's encoding (format {fmt}) is not PCM", "invalid_asset"
                )
            fmt_seen = True
        elif chunk == b"data" and fmt_seen:
            stream.seek(0, io.SEEK_END)
            length = stream.tell()
            stream.seek(0)
            if size != 0xFFFFFFFF and length < at + 8 + size:
                raise AssetRefused(
                    f"the WAV file is truncated: {length} bytes of the {at + 8 + size} it declares",
                    "invalid_asset",
                )
            return Sniffed("wav")
        at += 8 + size + (size & 1)
    raise AssetRefused(
        "the WAV file is damaged or truncated (no fmt and data chunks)", "invalid_asset"
    )


def _mp3_frame(data: bytes, at: int) -> int | None:
    """The length of the MPEG audio Layer III frame whose header is at ``at``, else None."""
    if at + 4 > len(data) or data[at] != 0xFF or data[at + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (data[at + 1] >> 3) & 3, (data[at + 1] >> 1) & 3
    bitrate_index, rate_index = data[at + 2] >> 4, (data[at + 2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    bitrate = _MP3_BITRATES[version == 3][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    padding = (data[at + 2] >> 1) & 1
    return (144 if version == 3 else 72) * bitrate // rate + padding


def _mp3(stream: IO[bytes], head: bytes) -> Sniffed:
    start = 0
    if head[:3] == b"ID3":
        if len(head) < 10:
            raise AssetRefused("the MP3 file is truncated", "invalid_asset")
        size = 0
        for byte in head[6:10]:
            size = (size << 7) | (byte & 0x7F)
        start = 10 + size + (10 if head[5] & 0x10 else 0)
    stream.seek(start)
    frames = stream.read(8192)
    stream.seek(0)
    length = _mp3_frame(frames, 0)
    # Two frame headers in a row: random bytes rarely pass; a one-frame file is one.
    if length is None or (len(frames) > length and _mp3_frame(frames, length) is None):
        raise AssetRefused(
            "the MP3 file is damaged or truncated (no MPEG audio frames)", "invalid_asset"
        )
    return Sniffed("mp3")


def _ogg(head: bytes) -> Sniffed:
    if len(head) < 27:
        raise AssetRefused("the Ogg file is truncated", "invalid_asset")
    segments = head[26]
    packet = head[27 + segments : 27 + segments + 8]
    if packet.startswith(b"\x01vorbis") or packet.startswith(b"OpusHead"):
        return Sniffed("ogg")
    if len(packet) < 8:
        raise AssetRefused("the Ogg file is truncated", "invalid_asset")
    raise AssetRefused(
        "the Ogg file holds no Vorbis or Opus audio (Ogg video and other codecs are not accepted)"
    )


def _m4a(stream: IO[bytes], head: bytes) -> Sniffed:
    """An MP4 (ISO BMFF) is audio when its tracks hold sound and no picture:
    the top-level boxes are walked by their headers (seeking, not reading) to
    ``moov``, whose track handlers (``hdlr``) say ``soun`` or ``vide``. An MP4
    video is refused: its sound would need extracting, and upload as audio is
    the place to say which it is."""
    brands = {head[i : i + 4] for i in range(8, min(int.from_bytes(head[:4], "big"), 64), 4)}
    if not brands & _M4A_BRANDS:
        raise AssetRefused("the MP4 file's brands (ftyp) are not an audio (M4A) file")
    moov = _find_box(stream, b"moov")
    stream.seek(0)
    if moov is None:
        raise AssetRefused("the M4A file is damaged or truncated (no moov box)", "invalid_asset")
    handlers = set(re.findall(rb"hdlr.{8}(soun|vide)", moov, re.DOTALL))
    if b"vide" in handlers:
        raise AssetRefused(
            "the MP4 file holds video; upload its sound as audio (M4A, MP3, WAV, ...)"
        )
    if b"soun" not in handlers:
        raise AssetRefused("the M4A file has no audio track", "invalid_asset")
    return Sniffed("m4a")


def _find_box(stream: IO[bytes], name: bytes) -> bytes | None:
    """The body of the first top-level box ``name`` (at most MAX_MOOV_BYTES), else None."""
    at = 0
    for _ in range(10_000):
        stream.seek(at)
        header = stream.read(16)
        if len(header) < 8:
            return None
        size, box = int.from_bytes(header[:4], "big"), header[4:8]
        offset = 8
        if size == 1:
            if len(header) < 16:
                return None
            size, offset = int.from_bytes(header[8:16], "big"), 16
        elif size == 0:
            size = 1 << 62  # to the end of the file
        if size < offset:
            return None
        if box == name:
            if size - offset > MAX_MOOV_BYTES:
                raise AssetRefused("the M4A file's moov box is too large", "invalid_asset")
            stream.seek(at + offset)
            body = stream.read(size - offset)
            return body if len(body) == size - offset or size == 1 << 62 else None
        at += size
    return None
