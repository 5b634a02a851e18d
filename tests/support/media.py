"""What the renderer made, read back: a video's stream and frames, a slide's margins."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from PIL import Image

from workers.slides import THEMES


def margins_are_background(image: Image.Image, theme: str) -> bool:
    """Nothing drawn right of the content box or below the footer."""
    width, height = image.size
    background = THEMES[theme].background
    right = image.crop((width - int(width * 0.07) + 3, 0, width, height))
    bottom = image.crop((width // 100 + 2, height - int(height * 0.02), width, height))
    return all(
        region.getcolors(1) == [(region.width * region.height, background)]
        for region in (right, bottom)
    )


def probe(path: Path) -> tuple[dict[str, Any], int]:
    """The stream's metadata and its decoded frame count."""
    # imageio-ffmpeg leaves its pipes to the garbage collector: collect them
    # here, where their ResourceWarning is known and harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        reader = imageio_ffmpeg.read_frames(str(path))
        meta: dict[str, Any] = next(reader)
        frames = sum(1 for _ in reader)
        del reader
        gc.collect()
    return meta, frames
