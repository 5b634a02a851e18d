"""What the renderer made, read back: a video's stream and frames, a slide's margins."""

from __future__ import annotations

import gc
import json
import subprocess
import warnings
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from PIL import Image

from workers.slides import THEMES, frame_layout


def margins_are_background(image: Image.Image, theme: str) -> bool:
    """Nothing drawn right of the content box or below the footer, at the
    margins of the frame's own layout (its size and aspect ratio)."""
    width, height = image.size
    layout = frame_layout(width, height)
    background = THEMES[theme].background
    # The accent bar runs down the left edge or along the top: skip it.
    below_bar = layout.bar[3] + 1 if layout.bar[2] == width else 0
    beside_bar = layout.bar[2] + 2 if layout.bar[3] == height else 0
    right = image.crop((layout.content.right + 3, below_bar, width, height))
    bottom = image.crop((beside_bar, height - int(height * 0.02), width, height))
    return all(
        region.getcolors(1) == [(region.width * region.height, background)]
        for region in (right, bottom)
    )


def ffprobe_json(ffprobe: str, video: Path, *args: str) -> dict[str, Any]:
    """ffprobe's JSON answer about ``video`` (``args``: what to show)."""
    result = subprocess.run(
        [ffprobe, "-v", "error", "-of", "json", *args, str(video)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


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
