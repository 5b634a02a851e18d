"""Sniffing decides an upload's kind from its bytes alone, and refuses
SVG, unknown bytes, decompression bombs and zip bombs cheaply."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile

import pytest

from core.sniff import AUDIO_KINDS, MAX_PPTX_UNCOMPRESSED, MEDIA_TYPES, AssetRefused, sniff
from tests.support.assets import (
    AUDIO_FORMATS,
    audio_bytes,
    image_bytes,
    pdf_bytes,
    png_claiming,
    pptx_bytes,
    svg_bytes,
    video_mp4_bytes,
    zip_bomb_pptx,
)

PIXELS = 40_000_000


@pytest.mark.parametrize(
    ("fmt", "kind"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")]
)
def test_images_are_sniffed_with_their_dimensions(fmt: str, kind: str) -> None:
    found = sniff(image_bytes(fmt, (64, 48)), max_pixels=PIXELS)
    assert (found.kind, found.width, found.height) == (kind, 64, 48)


def test_pdf_and_pptx_are_sniffed() -> None:
    assert sniff(pdf_bytes(), max_pixels=PIXELS).kind == "pdf"
    deck = sniff(pptx_bytes(slides=3), max_pixels=PIXELS)
    assert (deck.kind, deck.pages) == ("pptx", 3)


def test_a_file_object_is_read_from_its_start() -> None:
    stream = io.BytesIO(pdf_bytes())
    stream.seek(7)
    assert sniff(stream, max_pixels=PIXELS).kind == "pdf"


def test_svg_is_refused_with_a_reason() -> None:
    with pytest.raises(AssetRefused, match="SVG is not accepted") as refused:
        sniff(svg_bytes(), max_pixels=PIXELS)
    assert refused.value.code == "unsupported_asset_type"


@pytest.mark.parametrize("data", [b"", b"hello world", b"GIF8", b"\x89PNG\r\n\x1a\n"])
def test_other_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(AssetRefused):
        sniff(data, max_pixels=PIXELS)


def test_a_plain_zip_is_not_a_pptx() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("ppt/presentation.xml", "<p/>")
        archive.writestr("[Content_Types].xml", "<Types/>")
    with pytest.raises(AssetRefused, match="declares no presentation"):
        sniff(out.getvalue(), max_pixels=PIXELS)


def test_a_decompression_bomb_png_is_refused_from_its_header() -> None:
    bomb = png_claiming(100_000, 100_000)
    assert len(bomb) < 1000
    with pytest.raises(AssetRefused) as refused:
        sniff(bomb, max_pixels=PIXELS)
    assert refused.value.code == "asset_too_many_pixels"


def test_the_pixel_cap_is_below_pillows_guard() -> None:
    # 48 MP: under Pillow's own limit (89 MP), over the configured cap.
    with pytest.raises(AssetRefused, match="SLIDEFARM_MAX_ASSET_PIXELS") as refused:
        sniff(png_claiming(8000, 6000), max_pixels=PIXELS)
    assert refused.value.code == "asset_too_many_pixels"


def test_a_truncated_png_is_refused() -> None:
    data = image_bytes("PNG", (300, 300))
    with pytest.raises(AssetRefused) as refused:
        sniff(data[: len(data) // 2], max_pixels=PIXELS)
    assert refused.value.code == "invalid_asset"


def test_a_zip_bomb_dressed_as_pptx_is_refused_without_inflating_it() -> None:
    bomb = zip_bomb_pptx(entries=4, mib_each=512)
    assert len(bomb) < 4 * 1024 * 1024 and 4 * 512 * 2**20 > MAX_PPTX_UNCOMPRESSED
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(AssetRefused, match="zip bomb"):
            sniff(bomb, max_pixels=PIXELS)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 16 * 1024 * 1024


def test_the_zip_bomb_is_a_real_zip_that_inflates_to_what_it_declares() -> None:
    # The same construction, small: a valid PPTX-shaped archive, so the
    # refusal above is for its size alone.
    small = zip_bomb_pptx(entries=1, mib_each=2)
    assert sniff(small, max_pixels=PIXELS).kind == "pptx"
    with zipfile.ZipFile(io.BytesIO(small)) as archive:
        assert archive.read("ppt/media/zero0.bin") == b"\x00" * (2 << 20)


@pytest.mark.parametrize("made", sorted(AUDIO_FORMATS))
def test_audio_is_sniffed_from_its_container(made: str) -> None:
    kind = "ogg" if made == "vorbis" else made
    data = audio_bytes(made)
    assert sniff(data, max_pixels=PIXELS).kind == kind
    assert sniff(io.BytesIO(data), max_pixels=PIXELS).kind == kind
    assert MEDIA_TYPES[kind].startswith("audio/") and kind in AUDIO_KINDS


@pytest.mark.parametrize("made", sorted(AUDIO_FORMATS))
def test_truncated_audio_headers_are_refused(made: str) -> None:
    data = audio_bytes(made)
    for cut in (12, 30):
        with pytest.raises(AssetRefused):
            sniff(data[:cut], max_pixels=PIXELS)


def test_a_wav_cut_short_of_its_declared_length_is_refused() -> None:
    with pytest.raises(AssetRefused, match="truncated") as refused:
        sniff(audio_bytes("wav")[:5000], max_pixels=PIXELS)
    assert refused.value.code == "invalid_asset"


def test_an_m4a_without_its_moov_box_is_refused() -> None:
    data = audio_bytes("m4a")
    with pytest.raises(AssetRefused, match="moov"):
        sniff(data[: len(data) // 2], max_pixels=PIXELS)


def test_an_mp4_video_is_not_audio() -> None:
    with pytest.raises(AssetRefused, match="holds video"):
        sniff(video_mp4_bytes(), max_pixels=PIXELS)


def test_random_bytes_and_near_misses_are_not_audio() -> None:
    import random

    generator = random.Random(14)
    for _ in range(500):
        with pytest.raises(AssetRefused):
            sniff(generator.randbytes(4096), max_pixels=PIXELS)
    for fake in (b"\xff\xfb" + bytes(4000), b"OggS" + bytes(60), b"ID3" + bytes(60)):
        with pytest.raises(AssetRefused):
            sniff(fake, max_pixels=PIXELS)
