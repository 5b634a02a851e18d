"""The images a deck's slides show, loaded for drawing: each distinct one
once per job, in sRGB, upright, opaque and no larger than the frame needs.

A file is judged again when it is opened here, not only at upload: the
bytes on disk could have been swapped since, so Pillow's decompression-bomb
guard is on and ``SLIDEFARM_MAX_ASSET_PIXELS`` is checked before anything is
decoded. What comes out is always an RGB image:

- a GIF shows its first frame;
- EXIF orientation is applied (a phone's portrait JPEG stands upright);
- an embedded ICC profile (Adobe RGB, Display P3, a CMYK press profile...)
  is converted to sRGB with LittleCMS, so colours look as their author saw
  them; an unreadable profile is ignored, not fatal;
- transparency (RGBA, LA, a palette or colour key) is composited on the
  theme's background colour.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from core.config import Settings
from core.deck import Deck, is_asset_id
from core.sniff import IMAGE_KINDS, AssetRefused, sniff
from storage.assets import AssetLimits, AssetQuotaExceeded, AssetTooLarge
from workers.assets import AssetUnavailable, JobAssets
from workers.fetch import ImageRefused, fetch_image

RESAMPLE = Image.Resampling.LANCZOS
#: Formats a slide image may be in (what :mod:`core.sniff` accepts as images).
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}
_ORIENTATION = 0x0112
#: EXIF orientations that turn the image a quarter: its width becomes its height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))

RGB = tuple[int, int, int]


class ImageUnavailable(AssetUnavailable):
    """An image file cannot be drawn (damaged, not an image, too many
    pixels): the job fails, retrying would not help."""


@contextmanager
def _decoding(what: str) -> Iterator[None]:
    """Pillow's errors as :class:`ImageUnavailable` naming ``what``; its
    decompression-bomb warning is an error here, as at upload (Pillow only
    warns past ``MAX_IMAGE_PIXELS``, raising at twice that)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageUnavailable:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageUnavailable(f"{what} is refused as a decompression bomb: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageUnavailable(f"{what} is damaged or not an image: {error}") from error


def probe_image(path: Path, *, max_pixels: int, what: str = "the image") -> tuple[int, int]:
    """The size of the image at ``path`` from its header, nothing decoded;
    :class:`ImageUnavailable` as :func:`load_image` would raise it for the
    format and the pixel count."""
    with _decoding(what), Image.open(path) as opened:
        return _checked(opened, max_pixels, what)


def _checked(opened: Image.Image, max_pixels: int, what: str) -> tuple[int, int]:
    if opened.format not in _FORMATS:
        raise ImageUnavailable(f"{what} is a {opened.format}, not an accepted image")
    width, height = opened.size
    if width * height > max_pixels:
        raise ImageUnavailable(
            f"{what} has {width}x{height} = {width * height} pixels, more than "
            f"the {max_pixels} allowed (SLIDEFARM_MAX_ASSET_PIXELS)"
        )
    return width, height


def load_image(
    path: Path,
    *,
    max_pixels: int,
    background: RGB,
    bound: tuple[int, int] | None = None,
    what: str = "the image",
) -> Image.Image:
    """The image at ``path`` as an opaque sRGB ``RGB`` image (see the module),
    shrunk if larger than needed to cover a ``bound`` frame (either way up).
    :class:`ImageUnavailable` if it is not a PNG, JPEG, WebP or GIF of at most
    ``max_pixels`` pixels that decodes."""
    with _decoding(what), Image.open(path) as opened:
        _checked(opened, max_pixels, what)
        turned = opened.getexif().get(_ORIENTATION) in _QUARTER_TURNS
        if bound is not None and opened.format == "JPEG":
            # Decode at a reduced DCT scale when the frame needs far fewer pixels.
            frame = (bound[1], bound[0]) if turned else bound
            opened.draft(opened.mode, _needed(opened.size, frame))
        opened.seek(0)  # a GIF's (or animated WebP's) first frame
        opened.load()
        upright = ImageOps.exif_transpose(opened)
        image = _to_srgb(upright, opened.info.get("icc_profile"), background)
    if bound is not None:
        target = _needed(image.size, bound)
        if target[0] < image.width:
            image = image.resize(target, RESAMPLE, reducing_gap=3.0)
    return image


def _needed(size: tuple[int, int], bound: tuple[int, int]) -> tuple[int, int]:
    """The smallest size of ``size``'s shape that still covers ``bound``
    (every box a slide draws an image in lies inside the frame), never
    larger than ``size``."""
    width, height = size
    scale = max(bound[0] / width, bound[1] / height)
    if scale >= 1:
        return size
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _to_srgb(image: Image.Image, icc: bytes | None, background: RGB) -> Image.Image:
    """``image`` as opaque sRGB: its ICC profile applied, its transparency
    composited on ``background``."""
    alpha: Image.Image | None = None
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        if image.mode in ("LA", "La"):
            image = image.convert("L")
        elif image.mode in ("RGBA", "RGBa"):
            image = image.convert("RGB")
        else:  # a palette or colour key: its colours, in RGB
            image = rgba.convert("RGB")
    elif image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")  # a palette, 1-bit, 16-bit or float image
    if icc:
        image = _converted(image, icc)
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if alpha is not None and alpha.getextrema() != (255, 255):
        canvas = Image.new("RGB", image.size, background)
        canvas.paste(image, mask=alpha)
        image = canvas
    return image


def _converted(image: Image.Image, icc: bytes) -> Image.Image:
    """``image`` converted from its ``icc`` profile to sRGB; plain RGB when the
    profile cannot be read or does not fit the image's mode."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(
            image,
            source,
            _SRGB,
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            outputMode="RGB",
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image.convert("RGB")
    assert converted is not None  # inPlace=False returns the new image
    return converted


def cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` filling ``size``, cropped around its centre."""
    return ImageOps.fit(image, size, RESAMPLE, centering=(0.5, 0.5))


def contain(image: Image.Image, size: tuple[int, int], background: RGB) -> Image.Image:
    """``image`` whole inside ``size``, centred, the rest ``background`` (letterbox)."""
    return ImageOps.pad(image, size, RESAMPLE, color=background, centering=(0.5, 0.5))


def fitted(image: Image.Image, size: tuple[int, int], fit: str, background: RGB) -> Image.Image:
    """``image`` at ``size`` by ``fit``: ``cover`` or ``contain``."""
    return cover(image, size) if fit == "cover" else contain(image, size, background)


#: Decoded images (and, apart, placements) a job keeps, in frames' worth of
#: pixels: a deck of 200 distinct photos never holds them all at once.
CACHED_FRAMES = 6


class _PixelCache:
    """Images by key, least recently used first out once they hold more
    than ``budget`` pixels (the newest always stays)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.items: OrderedDict[Hashable, Image.Image] = OrderedDict()
        self.pixels = 0

    def get(self, key: Hashable, make: Callable[[], Image.Image]) -> Image.Image:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        image = make()
        self.items[key] = image
        self.pixels += image.width * image.height
        while self.pixels > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.pixels -= old.width * old.height
        return image


class SlideImages:
    """A deck's images by the reference the slides use (an asset id or a
    URL): each decoded once (by ``load``) and each placement resized once,
    while they fit the budget of :data:`CACHED_FRAMES` frames. One logo on
    50 slides is decoded once; 200 distinct photos are never all in memory."""

    def __init__(
        self,
        load: Callable[[str], Image.Image] | Mapping[str, Image.Image],
        background: RGB,
        frame: tuple[int, int] = (1920, 1080),
    ) -> None:
        """``load(ref)`` decodes an image (a mapping: images already decoded)."""
        self._load = load.__getitem__ if isinstance(load, Mapping) else load
        self.background = background
        budget = CACHED_FRAMES * frame[0] * frame[1]
        self._images = _PixelCache(budget)
        self._placed = _PixelCache(budget)

    def image(self, ref: str) -> Image.Image:
        """The decoded image ``ref`` (shared: do not draw on it)."""
        return self._images.get(ref, lambda: self._load(ref))

    def placed(self, ref: str, size: tuple[int, int], fit: str) -> Image.Image:
        """The image ``ref`` at ``size`` by ``fit`` (shared: do not draw on it)."""
        return self._placed.get(
            (ref, size, fit), lambda: fitted(self.image(ref), size, fit, self.background)
        )


def _first_slide(deck: Deck, ref: str) -> int:
    return next(n for n, s in enumerate(deck.slides, start=1) if s.image == ref)


def resolve_images(
    assets: JobAssets,
    deck: Deck,
    settings: Settings,
    background: RGB,
    check: Callable[[], None] = lambda: None,
) -> SlideImages:
    """Every image ``deck``'s slides show, ready to load: URLs first (each fetched
    once per job: a retry reuses the asset its first fetch stored), then
    assets by id. :class:`~workers.assets.AssetUnavailable` (or
    :class:`~workers.fetch.ImageRefused`) names the slide when one cannot be
    used; :class:`~workers.fetch.ImageFetchFailed` is transient. Each file's
    header is checked here; its pixels are decoded when a slide draws it.
    ``check`` runs before each fetch and check (the lease's: a cancel stops it)."""
    files: dict[str, Path] = {}
    for url in deck.image_urls():
        check()
        what = f"slide {_first_slide(deck, url)}'s image {url}"
        asset_id = assets.store.fetched(assets.job.id, url)
        if asset_id is None:
            asset_id = _fetch_as_asset(assets, url, settings, what)
        files[url] = assets.file(asset_id, IMAGE_KINDS, what)[1]
    for asset_id in deck.asset_ids():
        if deck.source is not None and asset_id == deck.source.asset:
            continue
        what = f"slide {_first_slide(deck, asset_id)}'s image"
        files[asset_id] = assets.file(asset_id, IMAGE_KINDS, what)[1]
    names: dict[str, str] = {}
    for ref, path in files.items():
        check()
        named = "" if is_asset_id(ref) else f" {ref}"
        names[ref] = f"slide {_first_slide(deck, ref)}'s image{named}"
        # The header now (a refused file fails the job before any slide is
        # drawn); the pixels when a slide needs them.
        probe_image(path, max_pixels=settings.max_asset_pixels, what=names[ref])

    def load(ref: str) -> Image.Image:
        return load_image(
            files[ref],
            max_pixels=settings.max_asset_pixels,
            background=background,
            bound=deck.options.size,
            what=names[ref],
        )

    return SlideImages(load, background, deck.options.size)


def _fetch_as_asset(assets: JobAssets, url: str, settings: Settings, what: str) -> str:
    """Fetch ``url``, store it as an asset of the job's owner, link it and
    remember it for the job; its id."""
    limits = AssetLimits.from_settings(settings)
    data = fetch_image(
        url,
        allow=settings.fetch_allow_networks,
        timeout=settings.fetch_timeout,
        max_bytes=min(limits.max_image_bytes, limits.max_bytes),
        what=what,
    )
    try:
        kind = sniff(data, max_pixels=limits.max_pixels).kind
    except AssetRefused as refused:
        raise ImageRefused(f"{what}: {refused}") from refused
    if kind not in IMAGE_KINDS:
        raise ImageRefused(f"{what}: the answer is a {kind.upper()}, not an image")
    try:
        asset, _ = assets.store.ingest(assets.job.owner, [data], limits)
    except (AssetRefused, AssetTooLarge, AssetQuotaExceeded) as refused:
        raise ImageRefused(f"{what}: {refused}") from refused
    assets.store.remember_fetch(assets.job.id, url, asset.id)
    return asset.id
