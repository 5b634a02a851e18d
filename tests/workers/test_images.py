"""Slide images with real Pillow and LittleCMS: every format and layout on
every aspect ratio, read back pixel by pixel; orientation, colour profiles,
transparency and the pixel cap."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageCms

from core.deck import ASPECTS, Deck
from tests.support.assets import image_bytes
from tests.support.images import display_p3_like_profile, encoded, exif_rotated_jpeg
from workers.fonts import font_chain
from workers.images import (
    CACHED_FRAMES,
    ImageUnavailable,
    SlideImages,
    contain,
    cover,
    load_image,
    probe_image,
)
from workers.slides import DEFAULT_SCRIM, THEMES, frame_layout, missing_glyphs, render_slide
from workers.text import MissingGlyphs

REF = "0f0f0f0f-0000-4000-8000-000000000001"
GREEN = (0, 200, 0)
TEXT = {
    "title": "Quarterly review",
    "body": "Revenue rose 12% on last quarter.",
    "bullets": ["EMEA +20%"],
}


def deck(slide: dict[str, Any], aspect: str = "16:9", theme: str = "light") -> Deck:
    return Deck.model_validate(
        {
            "title": "t",
            "slides": [{"image": REF, **slide}],
            "options": {"resolution": "480p", "aspect": aspect, "theme": theme},
        }
    )


def loaded(tmp_path: Path, data: bytes, d: Deck) -> SlideImages:
    path = tmp_path / "image"
    path.write_bytes(data)
    background = THEMES[d.options.theme].background
    image = load_image(path, max_pixels=10**7, background=background, bound=d.options.size)
    return SlideImages({REF: image}, background)


def draw(tmp_path: Path, slide: dict[str, Any], aspect: str = "16:9", **kw: Any) -> Image.Image:
    data = kw.pop("data", None) or encoded(Image.new("RGB", (160, 90), GREEN), "PNG")
    d = deck(slide, aspect, **kw)
    return render_slide(d, 0, images=loaded(tmp_path, data, d))


def bbox_of(image: Image.Image, color: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    """The bounding box of the pixels exactly ``color``."""
    masks = [
        band.point(lambda v, c=c: 255 if v == c else 0)
        for band, c in zip(image.split(), color, strict=True)
    ]
    both = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2])
    return both.getbbox()


def solid(region: Image.Image) -> tuple[int, int, int] | None:
    colors = region.getcolors(1)
    return colors[0][1] if colors else None


def text_bbox(image: Image.Image, theme: str, hidden: list[tuple[int, int, int, int]]) -> Any:
    """Where anything but the background is drawn in the content area, with
    ``hidden`` boxes (the image, the accent bar) painted over first."""
    background = THEMES[theme].background
    layout = frame_layout(*image.size)
    copy = image.copy()
    bar = (layout.bar[0], layout.bar[1], layout.bar[2] + 1, layout.bar[3] + 1)  # inclusive
    for box in [*hidden, bar]:
        copy.paste(background, box)
    copy.paste(background, (0, layout.content.bottom, image.width, image.height))  # footer
    return ImageChops.difference(copy, Image.new("RGB", image.size, background)).getbbox()


def near(a: tuple[int, ...], b: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("fmt", "tolerance"), [("PNG", 0), ("JPEG", 8), ("WEBP", 8), ("GIF", 3)])
def test_every_format_loads_and_a_gif_shows_its_first_frame(
    tmp_path: Path, fmt: str, tolerance: int
) -> None:
    # image_bytes: teal; a GIF's second frame is red.
    image = draw(tmp_path, {"layout": "full"}, data=image_bytes(fmt, (160, 90)))
    assert near(image.getpixel((image.width // 2, image.height // 2)), (0, 128, 128), tolerance)


@pytest.mark.parametrize("aspect", ASPECTS)
def test_full_cover_fills_the_frame_and_an_image_alone_has_no_scrim(
    tmp_path: Path, aspect: str
) -> None:
    image = draw(tmp_path, {"layout": "full"}, aspect)
    # Everything but the accent bar and the page number is the image, unveiled.
    for point in [(image.width // 2, image.height // 2), (image.width - 1, image.height // 2)]:
        assert image.getpixel(point) == GREEN
    assert image.getpixel((image.width // 2, image.height - 1)) == GREEN
    colors = dict((c, n) for n, c in image.getcolors(1_000_000) or [])
    assert colors[GREEN] >= 0.95 * image.width * image.height


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_full_with_text_is_veiled_and_its_text_is_light(
    tmp_path: Path, aspect: str, theme: str
) -> None:
    image = draw(tmp_path, {**TEXT, "layout": "full"}, aspect, theme=theme)
    veiled = tuple(round(c * (1 - DEFAULT_SCRIM)) for c in GREEN)
    corner = image.getpixel((image.width - 2, image.height // 2))
    assert near(corner, veiled, 1)
    layout = frame_layout(*image.size)
    title_row = image.crop(
        (layout.content.left, layout.content.top, layout.content.right, layout.content.bottom)
    )
    brightest = max(sum(c) for _, c in title_row.getcolors(1_000_000) or [])
    assert brightest >= 3 * 240  # white title over the dark veil, whatever the theme


def test_an_explicit_scrim_sets_the_veil(tmp_path: Path) -> None:
    clear = draw(tmp_path, {**TEXT, "layout": "full", "scrim": 0.0})
    dark = draw(tmp_path, {"layout": "background", "scrim": 0.8})
    assert clear.getpixel((clear.width - 2, clear.height // 2)) == GREEN
    assert near(dark.getpixel((dark.width - 2, dark.height // 2)), (0, 40, 0), 1)


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_full_contain_letterboxes_with_the_theme_background(
    tmp_path: Path, aspect: str, theme: str
) -> None:
    square = encoded(Image.new("RGB", (100, 100), GREEN), "PNG")
    image = draw(tmp_path, {"layout": "full", "fit": "contain"}, aspect, theme=theme, data=square)
    box = bbox_of(image, GREEN)
    assert box is not None
    side = min(image.size)
    # Whole and undistorted (the accent bar hides an edge of it, on the leading side).
    if image.width < image.height:
        assert box[2] - box[0] == side and abs((box[0] + box[2]) / 2 - image.width / 2) <= 1
    else:
        assert box[3] - box[1] == side and abs((box[1] + box[3]) / 2 - image.height / 2) <= 1
    if image.width != image.height:  # a bar of theme background beside or above it
        far = (
            (image.width - 2, image.height // 2)
            if image.width > image.height
            else (image.width // 2, image.height - 2)
        )
        assert image.getpixel(far) == THEMES[theme].background


@pytest.mark.parametrize("aspect", ASPECTS)
def test_background_covers_the_frame_behind_the_text(tmp_path: Path, aspect: str) -> None:
    image = draw(tmp_path, {**TEXT, "layout": "background", "fit": "contain"}, aspect)
    veiled = tuple(round(c * (1 - DEFAULT_SCRIM)) for c in GREEN)
    for point in [(image.width - 2, image.height // 2), (image.width - 2, image.height - 2)]:
        assert near(image.getpixel(point), veiled, 1)  # cover, whatever fit says


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("fit", ["cover", "contain"])
def test_left_and_right_keep_image_and_text_apart(
    tmp_path: Path, aspect: str, side: str, fit: str
) -> None:
    long = {
        "title": "Quarterly review of the platform migration " * 4,
        "body": "Revenue rose 12% on last quarter while costs fell. " * 38,
        "bullets": ["APAC was flat: currency effects ate the growth " * 4] * 6,
    }
    image = draw(tmp_path, {**long, "layout": side, "fit": fit}, aspect)
    layout = frame_layout(*image.size)
    content = layout.content
    picture = bbox_of(image, GREEN)
    assert picture is not None
    assert solid(image.crop(picture)) == GREEN  # no text drawn over the image
    words = text_bbox(image, "light", [picture])
    assert words is not None
    # A glyph's left side bearing may reach a pixel or two left of its pen.
    assert content.left - 2 <= words[0] and words[2] <= content.right
    assert content.top <= words[1] and words[3] <= content.bottom
    if image.width < image.height:  # upright: stacked, the image first
        assert picture[3] < words[1]
        assert picture[1] >= content.top
    elif side == "left":
        assert picture[2] < words[0] and picture[0] >= content.left
    else:
        assert words[2] < picture[0] and picture[2] <= content.right
    if fit == "cover" and image.width >= image.height:
        assert picture[2] - picture[0] == int(content.width * 0.45)


def test_layout_defaults_to_right_with_text_and_full_without(tmp_path: Path) -> None:
    beside = draw(tmp_path, TEXT)
    alone = draw(tmp_path, {"title": "Only a title"})
    picture = bbox_of(beside, GREEN)
    assert picture is not None and picture[0] > beside.width // 2
    assert near(alone.getpixel((alone.width - 2, alone.height // 2)), (0, 90, 0), 1)  # full, veiled


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("side", ["left", "right", "full"])
def test_a_caption_is_drawn_under_the_image_within_its_width(
    tmp_path: Path, aspect: str, side: str
) -> None:
    slide = {"title": "T", "layout": side, "caption": "A very long caption " * 15}
    with_caption = draw(tmp_path, slide, aspect)
    without = draw(tmp_path, {"title": "T", "layout": side}, aspect)
    changed = ImageChops.difference(with_caption, without).getbbox()
    assert changed is not None
    layout = frame_layout(*with_caption.size)
    if side == "full":
        # In the footer row, left of the page number.
        assert changed[1] >= layout.content.bottom and changed[0] >= layout.content.left
    else:
        picture = bbox_of(with_caption, GREEN)
        assert picture is not None
        caption = bbox_of(without, GREEN)
        assert caption is not None and picture[3] < caption[3]  # the image made room
        assert changed[1] >= picture[3] - 1
        assert caption[0] <= changed[0] and changed[2] <= caption[2]  # ellipsised to width
        assert changed[3] <= layout.content.bottom


def test_caption_characters_are_checked_for_glyphs(tmp_path: Path) -> None:
    d = deck({"title": "T", "caption": "hieroglyph \U00013000"})
    problem = missing_glyphs(d, font_chain(False))
    assert problem is not None and "U+13000" in problem and "slide 1" in problem
    with pytest.raises(MissingGlyphs):
        render_slide(d, 0, fonts=font_chain(False), images=loaded(tmp_path, image_bytes("PNG"), d))


def test_a_slide_with_an_image_needs_its_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slide 1 has an image"):
        render_slide(deck({"title": "T"}), 0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    path.write_bytes(exif_rotated_jpeg((80, 40)))
    image = load_image(path, max_pixels=10**6, background=(255, 255, 255))
    assert image.size == (40, 80)  # turned upright
    assert near(image.getpixel((20, 10)), (220, 30, 30), 12)  # red on top
    assert near(image.getpixel((20, 70)), (30, 30, 220), 12)


def test_an_icc_profile_is_converted_to_srgb(tmp_path: Path) -> None:
    icc = display_p3_like_profile()
    color = (40, 200, 60)
    tagged = Image.new("RGB", (8, 8), color)
    expected = ImageCms.profileToProfile(
        tagged,
        ImageCms.ImageCmsProfile(io.BytesIO(icc)),
        ImageCms.createProfile("sRGB"),
        outputMode="RGB",
    )
    assert expected is not None
    want = expected.getpixel((0, 0))
    assert isinstance(want, tuple) and not near(want, color, 20)  # a real conversion
    for fmt in ("PNG", "JPEG", "WEBP"):
        path = tmp_path / f"p3.{fmt}"
        path.write_bytes(encoded(tagged, fmt, icc_profile=icc, quality=100))
        image = load_image(path, max_pixels=10**6, background=(255, 255, 255))
        assert near(image.getpixel((4, 4)), want, 6), fmt


def test_a_cmyk_jpeg_comes_out_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    image = load_image(path, max_pixels=10**6, background=(0, 0, 0))
    assert image.mode == "RGB" and near(image.getpixel((4, 4)), (255, 0, 0), 6)


def test_a_broken_profile_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bad-icc.png"
    path.write_bytes(encoded(Image.new("RGB", (8, 8), GREEN), "PNG", icc_profile=b"junk" * 40))
    image = load_image(path, max_pixels=10**6, background=(0, 0, 0))
    assert image.getpixel((4, 4)) == GREEN


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_the_theme_background(
    tmp_path: Path, theme: str, mode: str
) -> None:
    background = THEMES[theme].background
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    rgba.paste((255, 255, 255, 255), (20, 0, 40, 20))
    if mode == "LA":
        source = rgba.convert("LA")
    elif mode == "P":
        source = rgba.convert("P")
        source.info["transparency"] = source.getpixel((0, 0))
    else:
        source = rgba
    path = tmp_path / "alpha.png"
    path.write_bytes(
        encoded(
            source, "PNG", **({"transparency": source.info["transparency"]} if mode == "P" else {})
        )
    )
    image = load_image(path, max_pixels=10**6, background=background)
    assert image.mode == "RGB"
    assert image.getpixel((5, 10)) == background
    assert image.getpixel((35, 10)) == (255, 255, 255)


def test_too_many_pixels_or_a_swapped_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encoded(Image.new("RGB", (200, 100), GREEN), "PNG"))
    with pytest.raises(ImageUnavailable, match="SLIDEFARM_MAX_ASSET_PIXELS"):
        load_image(path, max_pixels=19_999, background=(0, 0, 0))
    with pytest.raises(ImageUnavailable, match="SLIDEFARM_MAX_ASSET_PIXELS"):
        probe_image(path, max_pixels=19_999)  # the header alone says so
    assert probe_image(path, max_pixels=20_000) == (200, 100)
    path.write_bytes(b"%PDF-1.7 not an image any more")
    for check in (probe_image, load_image):
        with pytest.raises(ImageUnavailable, match="damaged or not an image"):
            check(
                path, max_pixels=10**6, **({"background": (0, 0, 0)} if check is load_image else {})
            )


def test_large_images_are_shrunk_to_what_the_frame_needs(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    path.write_bytes(encoded(Image.new("RGB", (4000, 3000), GREEN), "JPEG"))
    image = load_image(path, max_pixels=10**8, background=(0, 0, 0), bound=(854, 480))
    # Enough to cover 854x480, no more.
    assert image.width == 854 and 480 <= image.height <= 642
    turned = tmp_path / "turned.jpg"
    turned.write_bytes(exif_rotated_jpeg((2000, 1000)))  # upright: 1000x2000
    image = load_image(turned, max_pixels=10**8, background=(0, 0, 0), bound=(854, 480))
    assert image.width == 854 and image.height >= 1700
    assert near(image.getpixel((400, 100)), (220, 30, 30), 12)  # red on top


def test_helpers_cover_and_contain() -> None:
    wide = Image.new("RGB", (200, 100), GREEN)
    assert cover(wide, (50, 50)).size == (50, 50)
    assert solid(cover(wide, (50, 50))) == GREEN
    boxed = contain(wide, (100, 100), (1, 2, 3))
    assert boxed.getpixel((50, 5)) == (1, 2, 3) and boxed.getpixel((50, 50)) == GREEN


def test_each_placement_is_computed_once() -> None:
    pictures = SlideImages({REF: Image.new("RGB", (100, 100), GREEN)}, (0, 0, 0))
    first = pictures.placed(REF, (40, 30), "cover")
    assert pictures.placed(REF, (40, 30), "cover") is first
    assert pictures.placed(REF, (40, 30), "contain") is not first


def test_a_caption_follows_a_contained_picture(tmp_path: Path) -> None:
    square = encoded(Image.new("RGB", (200, 50), GREEN), "PNG")  # short in its column
    slide = {"title": "T", "layout": "left", "fit": "contain"}
    image = draw(tmp_path, {**slide, "caption": "Figure 1"}, data=square)
    picture = bbox_of(image, GREEN)
    assert picture is not None
    layout = frame_layout(*image.size)
    content = layout.content
    column = (content.left, picture[3], content.left + int(content.width * 0.45), content.bottom)
    below = image.crop(column)
    background = Image.new("RGB", below.size, THEMES["light"].background)
    caption = ImageChops.difference(below, background).getbbox()
    assert caption is not None
    assert caption[1] <= 2 * layout.footer_size  # just under the picture, not the column's foot
    assert content.bottom - picture[3] > 4 * layout.footer_size  # (which is further down)


@pytest.mark.parametrize("aspect", ASPECTS)
def test_slides_without_an_image_are_drawn_as_if_no_slide_had_one(
    tmp_path: Path, aspect: str
) -> None:
    plain = {**TEXT, "title": "No image here"}
    alone = Deck.model_validate(
        {"title": "t", "slides": [plain, {"title": "x"}], "options": {"aspect": aspect}}
    )
    mixed = Deck.model_validate(
        {
            "title": "t",
            "slides": [plain, {"title": "x", "image": REF}],
            "options": {"aspect": aspect},
        }
    )
    pictures = loaded(tmp_path, image_bytes("PNG"), mixed)
    assert render_slide(alone, 0).tobytes() == render_slide(mixed, 0, images=pictures).tobytes()


def test_an_image_is_decoded_once_while_it_fits_and_memory_stays_bounded() -> None:
    decoded: list[str] = []

    def load(ref: str) -> Image.Image:
        decoded.append(ref)
        return Image.new("RGB", (160, 90), GREEN)

    frame = (160, 90)  # the budget: CACHED_FRAMES frames' worth of pixels
    pictures = SlideImages(load, (0, 0, 0), frame)
    for _ in range(50):  # one logo on 50 slides
        pictures.placed("logo", (80, 45), "cover")
    assert decoded == ["logo"]
    for n in range(CACHED_FRAMES * 3):  # many distinct photos
        pictures.image(f"photo{n}")
    assert len(decoded) == 1 + CACHED_FRAMES * 3
    held = pictures._images.pixels  # what stays decoded
    assert held <= CACHED_FRAMES * frame[0] * frame[1]
