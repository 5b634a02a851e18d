"""The MP4s as real clients see them: Debian's ffprobe reads the colour tags,
chapters and keyframes, ffmpeg and Chromium decode the colours.

The encodes use the ffmpeg that imageio-ffmpeg ships (no ffprobe); ffprobe is
Debian's (package ``ffmpeg``, which ``make test`` installs), Chromium is
Debian's, driven by Playwright.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import pytest
from flask import Flask, send_file
from PIL import Image
from werkzeug.serving import make_server

from core.config import Settings
from core.deck import Deck
from storage import JobStore
from storage.files import VIDEO_FILE
from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS, require_chromium
from tests.support.decks import small_deck
from tests.support.media import ffprobe_json
from tests.support.services import missing
from workers.pipeline import Outcome, run_attempt
from workers.slides import THEMES, render_slide, save_png
from workers.video import FADE_BATCH, encode, fade_batch, frame_counts

FFPROBE = os.environ.get("SLIDEFARM_TEST_FFPROBE", "/usr/bin/ffprobe")
HD = (1280, 720)  # Chromium reads untagged video this size as BT.709, smaller as BT.601

# Every colour the themes draw with, and the primaries (the hardest case).
COLOURS = sorted(
    {c for theme in THEMES.values() for c in vars(theme).values()}
    | {(255, 0, 0), (0, 255, 0), (0, 0, 255)}
)

TITLES = [
    "Revenue = up; #1 again",
    "line one\nline two",
    "Ünïcödé 日本語 مرحبا 🙂",
    "",
    "C:\\",
    "   ",
    "  padded  ",
    "a\\b # c; d=e",
    "日本語" * 66,
    "\\=;#\r\nend",
]
NAMES = [
    "Revenue = up; #1 again",
    "line one\nline two",
    "Ünïcödé 日本語 مرحبا 🙂",
    "Slide 4",
    "C:\\",
    "Slide 6",
    "padded",
    "a\\b # c; d=e",
    "日本語" * 66,
    "\\=;#\r\nend",
]
DURATIONS = [0.5, 1.3, 2.04, 0.7, 1.0, 0.9, 0.6, 1.1, 0.5, 0.8]


@pytest.fixture(scope="module")
def ffprobe() -> str:
    if not Path(FFPROBE).exists() or shutil.which(FFPROBE) is None:
        missing(f"ffprobe not installed at {FFPROBE} (make ffprobe, or apt-get install ffmpeg)")
    return FFPROBE


def solid_slides(
    folder: Path, colours: list[tuple[int, int, int]], size: tuple[int, int] = HD
) -> list[Path]:
    """One slide PNG of a single colour per entry of ``colours``."""
    paths = []
    for n, colour in enumerate(colours, 1):
        path = folder / f"{n:03d}.png"
        save_png(Image.new("RGB", size, colour), path)
        paths.append(path)
    return paths


def slide_starts(frames: list[int]) -> list[int]:
    """The first frame of each slide."""
    return list(itertools.accumulate(frames[:-1], initial=0))


def png_colour(path: Path) -> tuple[int, int, int]:
    with Image.open(path) as image:
        r, g, b = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
        return r, g, b


def assert_close(seen: list[float], expected: tuple[int, ...], channels: str, what: str) -> None:
    for channel in channels:
        i = "RGB".index(channel)
        assert abs(seen[i] - expected[i]) <= 2, f"{what}: {channel} {seen} vs {expected}"


# -- the stream: colour tags, keyframes, chapters -------------------------------

#: (transition, fps, slides, preset): the three ways ``encode`` runs ffmpeg,
#: and x264 with B-frames (``veryfast``; ``ultrafast`` has none).
PATHS = {
    "still": ("none", 24, len(DURATIONS), "ultrafast"),
    "still-veryfast": ("none", 30, len(DURATIONS), "veryfast"),
    "fade": ("fade", 25, FADE_BATCH, "ultrafast"),
    "fade-batched": ("fade", 30, len(DURATIONS), "ultrafast"),
}


@pytest.fixture(scope="module", params=sorted(PATHS))
def encoded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int, list[int]]:
    """A video of a deck of irregular durations: its path, fps and frames per slide."""
    transition, fps, count, preset = PATHS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    colours = [COLOURS[n % len(COLOURS)] for n in range(count)]
    images = solid_slides(folder, colours, size=(854, 480))
    video = folder / "video.mp4"
    encode(
        images,
        DURATIONS[:count],
        fps,
        video,
        titles=TITLES[:count],
        transition=transition,
        preset=preset,
        fade_color="0x111827",
    )
    return video, fps, frame_counts(DURATIONS[:count], fps)


def test_video_is_tagged_bt709_limited_range(
    ffprobe: str, encoded: tuple[Path, int, list[int]]
) -> None:
    video, _, _ = encoded
    stream = ffprobe_json(ffprobe, video, "-select_streams", "v", "-show_streams")["streams"][0]
    assert stream["color_space"] == "bt709"
    assert stream["color_primaries"] == "bt709"
    assert stream["color_transfer"] == "bt709"
    assert stream["color_range"] == "tv"
    # The container says so too, for players that read the MP4 and not the
    # H.264 stream: a colr atom, nclx, BT.709 x3, limited range.
    data = video.read_bytes()
    at = data.find(b"colrnclx")
    assert at >= 4, "no colr atom"
    assert int.from_bytes(data[at - 4 : at], "big") == 19
    assert data[at + 8 : at + 15] == bytes([0, 1, 0, 1, 0, 1, 0])


def test_every_slide_starts_on_a_keyframe(
    ffprobe: str, encoded: tuple[Path, int, list[int]]
) -> None:
    video, fps, frames = encoded
    answer = ffprobe_json(
        ffprobe,
        video,
        "-select_streams",
        "v",
        "-skip_frame",
        "nokey",
        "-show_frames",
        "-show_entries",
        "stream=time_base:frame=pts,key_frame",
    )
    time_base = Fraction(answer["streams"][0]["time_base"])
    keyframes = [Fraction(f["pts"]) * time_base * fps for f in answer["frames"]]
    assert all(f["key_frame"] == 1 for f in answer["frames"])
    assert all(k.denominator == 1 for k in keyframes), keyframes
    assert set(slide_starts(frames)) <= set(keyframes), (slide_starts(frames), keyframes)
    counted = ffprobe_json(
        ffprobe,
        video,
        "-select_streams",
        "v",
        "-count_frames",
        "-show_entries",
        "stream=nb_read_frames",
    )
    assert int(counted["streams"][0]["nb_read_frames"]) == sum(frames)


def test_each_slide_is_a_chapter_named_by_its_title(
    ffprobe: str, encoded: tuple[Path, int, list[int]]
) -> None:
    video, fps, frames = encoded
    chapters = ffprobe_json(ffprobe, video, "-show_chapters")["chapters"]
    assert len(chapters) == len(frames)
    starts = slide_starts(frames)
    ends = [*starts[1:], sum(frames)]
    for n, chapter in enumerate(chapters):
        time_base = Fraction(chapter["time_base"])
        assert chapter["start"] * time_base == Fraction(starts[n], fps), chapter
        assert chapter["end"] * time_base == Fraction(ends[n], fps), chapter
        assert chapter["tags"]["title"] == NAMES[n]


def test_a_rendered_job_has_a_chapter_per_slide_title(
    ffprobe: str, store: JobStore, settings: Settings
) -> None:
    deck = small_deck(slides=3, duration=0.5)
    deck["slides"][1]["title"] = ""
    deck["slides"][2]["title"] = "Q&A = 10; #2"
    job, _ = store.create(deck, title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    assert run_attempt(store, claimed, settings).outcome is Outcome.COMPLETED
    video = settings.output_dir / job.id / VIDEO_FILE
    chapters = ffprobe_json(ffprobe, video, "-show_chapters")["chapters"]
    assert [c["tags"]["title"] for c in chapters] == ["Slide 1", "Slide 2", "Q&A = 10; #2"]
    assert [float(c["start_time"]) for c in chapters] == [0.0, 0.5, 1.0]


# -- the colours as decoders show them ------------------------------------------


def _decoded_frame(video: Path, n: int, vf: str, pix_fmt: str) -> bytes:
    """Frame ``n`` of ``video`` through the filter ``vf``, decoded by ffmpeg
    (accurate rounding) to raw ``pix_fmt`` bytes."""
    return subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(video),
            "-vf",
            f"select=eq(n\\,{n}),{vf}",
            "-sws_flags",
            "accurate_rnd+full_chroma_int",
            "-frames:v",
            "1",
            "-pix_fmt",
            pix_fmt,
            "-f",
            "rawvideo",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


def _frame_luma(video: Path, n: int) -> float:
    """The mean grey level of frame ``n`` of ``video``, decoded by ffmpeg."""
    raw = _decoded_frame(video, n, "scale=32:18", "gray")
    assert len(raw) == 32 * 18
    return sum(raw) / len(raw)


@pytest.mark.parametrize("transition", ["none", "fade"])
def test_ffmpeg_decodes_the_slide_colours(tmp_path: Path, transition: str) -> None:
    images = solid_slides(tmp_path, COLOURS)
    fps = 25
    video = tmp_path / "video.mp4"
    encode(
        images,
        [1.0] * len(images),
        fps,
        video,
        transition=transition,
        preset="ultrafast",
        fade_color="0xffffff",
    )
    width, height = HD
    for n, image in enumerate(images):
        middle = n * fps + fps // 2  # the fades are over by then
        # ffmpeg converts to RGB with the matrix the stream is tagged with;
        # accurate_rnd, or its fast path alone is off by up to 3 levels.
        raw = _decoded_frame(
            video, middle, f"crop=16:16:{width // 2 - 8}:{height // 2 - 8}", "rgb24"
        )
        assert len(raw) == 16 * 16 * 3
        mean = [sum(raw[c::3]) / 256 for c in range(3)]
        assert_close(mean, png_colour(image), "RGB", f"slide {n + 1}")


@pytest.mark.parametrize("batched", [False, True])
def test_each_slide_comes_in_its_own_way(
    tmp_path: Path, batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-slide transitions: a slide that fades in dips from the slide
    before it through the background colour; a cut stays a cut."""
    fps = 25
    images = solid_slides(tmp_path, [(0, 0, 0)] * 4, size=(320, 180))
    video = tmp_path / "video.mp4"
    transitions = ["none", "fade", "none", "fade"]
    if batched:  # one slide per ffmpeg run, then joined
        monkeypatch.setattr("workers.video.fade_batch", lambda _w, _h: 1)
    encode(
        images,
        [1.0] * 4,
        fps,
        video,
        transition=transitions,
        preset="ultrafast",
        fade_color="0xffffff",
    )
    white, black = 200, 40
    assert _frame_luma(video, 0) < black  # slide 1 is cut in: no fade from white
    assert _frame_luma(video, fps - 1) > white  # ... and dips out before slide 2
    assert _frame_luma(video, fps) > white  # slide 2 fades in
    assert _frame_luma(video, 2 * fps - 1) < black  # a cut to slide 3
    assert _frame_luma(video, 2 * fps) < black
    assert _frame_luma(video, 3 * fps - 1) > white  # slide 3 dips out before slide 4
    assert _frame_luma(video, 4 * fps - 1) > white  # slide 4 faded in, so it fades out
    assert sum(frame_counts([1.0] * 4, fps)) == 4 * fps


PAGE = "<!doctype html><video id=video muted preload=auto src=/video.mp4></video>"

#: The mean colour of the 16x16 pixels at the middle of the frame at time ``t``.
READ_FRAME = """async (t) => {
  const video = document.getElementById('video');
  if (video.readyState < 2) {
    await new Promise((loaded, failed) => {
      video.addEventListener('loadeddata', loaded, {once: true});
      video.addEventListener('error', () => failed(new Error(video.error.message)),
                             {once: true});
    });
  }
  const shown = new Promise(done => video.requestVideoFrameCallback(() => done()));
  await new Promise(done => {
    video.addEventListener('seeked', done, {once: true});
    video.currentTime = t;
  });
  await shown;
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext('2d', {willReadFrequently: true});
  context.drawImage(video, 0, 0);
  const pixels = context.getImageData(canvas.width / 2 - 8, canvas.height / 2 - 8, 16, 16).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < pixels.length; i += 4) {
    sum[0] += pixels[i]; sum[1] += pixels[i + 1]; sum[2] += pixels[i + 2];
  }
  return sum.map(s => s / (pixels.length / 4));
}"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A page with a ``<video>`` of ``video.mp4`` in ``tmp_path``, served from
    localhost with Range support (Chromium seeks only in ranged responses)."""
    video = tmp_path / "video.mp4"
    app = Flask(__name__)
    app.add_url_rule("/", "page", lambda: PAGE)
    app.add_url_rule(
        "/video.mp4", "video", lambda: send_file(video, mimetype="video/mp4", conditional=True)
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", video
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


#: Chromium converts video to RGB on the GPU (SwiftShader here: exact) or,
#: without one, on the CPU with libyuv, whose limited-range BT.709 table caps
#: the blue coefficient (2.0 for 2.112: a saturated blue comes out up to 8
#: levels short, in every standard HD video); there only red and green are
#: exact.
DECODERS = {
    "gpu": (
        [f for f in CHROMIUM_FLAGS if f != "--disable-gpu"]
        + ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
        "RGB",
    ),
    "cpu": (CHROMIUM_FLAGS, "RG"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_chromium_shows_the_slide_colours(
    served: tuple[str, Path], tmp_path: Path, decoder: str
) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    url, video = served
    images = solid_slides(tmp_path, COLOURS)
    encode(images, [1.0] * len(images), 25, video, preset="ultrafast")
    flags, channels = DECODERS[decoder]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page()
            page.goto(url)
            for n, image in enumerate(images):
                seen = page.evaluate(READ_FRAME, n + 0.5)
                assert_close(seen, png_colour(image), channels, f"slide {n + 1} ({decoder})")
        finally:
            browser.close()


# -- sizes: upright, square and 2160p frames ---------------------------------------

#: (resolution, aspect, transition, slides, preset): each size through a real
#: encode. Three 2160p fade slides take two fade batches and a join, with
#: ``veryfast`` (High profile, B-frames), which must still take level 5.1.
SIZED = {
    "upright": ("1080p", "9:16", "none", 3, "ultrafast"),
    "square-fade": ("1080p", "1:1", "fade", 3, "ultrafast"),
    "2160p-fade": ("2160p", "16:9", "fade", 3, "veryfast"),
}


@pytest.mark.parametrize("case", sorted(SIZED))
def test_each_size_encodes_to_an_mp4_of_its_size_and_exact_length(
    ffprobe: str, tmp_path: Path, case: str
) -> None:
    resolution, aspect, transition, count, preset = SIZED[case]
    durations = DURATIONS[:count]
    options = {"resolution": resolution, "aspect": aspect, "fps": 30, "transition": transition}
    slides = [{"title": f"Slide {n}", "body": "Text " * 30} for n in range(count)]
    deck = Deck.model_validate({"title": "t", "slides": slides, "options": options})
    images = []
    for i in range(count):
        images.append(tmp_path / f"{i:03d}.png")
        save_png(render_slide(deck, i), images[-1])
    video = tmp_path / "video.mp4"
    encode(images, durations, 30, video, transition=transition, preset=preset)
    answer = ffprobe_json(ffprobe, video, "-select_streams", "v", "-count_frames", "-show_streams")
    stream = answer["streams"][0]
    assert (stream["width"], stream["height"]) == deck.options.size
    assert int(stream["nb_read_frames"]) == sum(frame_counts(durations, 30))
    if resolution == "2160p":
        # 3840x2160 at 30 fps needs level 5.1: x264 picks it, nothing caps it.
        assert stream["profile"] == "High" and stream["level"] == 51


def test_a_2160p_fade_batch_holds_the_pixels_of_a_1080p_batch() -> None:
    assert fade_batch(854, 480) == fade_batch(1920, 1080) == fade_batch(1080, 1920) == FADE_BATCH
    assert fade_batch(3840, 2160) == fade_batch(2160, 3840) == 2
    assert fade_batch(2160, 2160) == 3
