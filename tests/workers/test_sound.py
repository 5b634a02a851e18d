"""Narrated decks in-process against the real store, with the real espeak-ng
and ffmpeg: the sound track, its timing and loudness, subtitles, music, the
speech cache and stops (docs/design.md, "Sound")."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import wave
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest

from core.config import Settings
from storage import JobStore, Stage, Status
from tests.support.decks import small_deck
from tests.support.media import ffprobe_json
from tests.support.services import missing
from workers.audio import SAMPLE_RATE, subrip, timed_cues, webvtt
from workers.pipeline import Outcome, run_attempt
from workers.speech import CACHE_DIR, Cue, sentences
from workers.video import frame_counts

FFPROBE = "/usr/bin/ffprobe"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
EBUR128 = ["-af", "ebur128=peak=true", "-f", "null", "-"]
GRAY_FRAME = ["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"]
MONO = ["-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le"]


@pytest.fixture(autouse=True)
def _speech_tools() -> None:
    # Skipped only outside CI: with SLIDEFARM_REQUIRE_SERVICES a missing tool fails.
    if shutil.which("espeak-ng") is None or not Path(FFPROBE).exists():
        missing("needs espeak-ng and ffprobe (make test installs them)")


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"heartbeat_interval": 0.05})


def narrated(texts: list[str | None], **options: Any) -> dict[str, Any]:
    deck = small_deck(slides=len(texts), duration=1.0, **options)
    for slide, text in zip(deck["slides"], texts, strict=True):
        if text is not None:
            slide["narration"] = text
            del slide["duration"]  # auto
    return deck


def render(store: JobStore, settings: Settings, deck: dict[str, Any]) -> str:
    job, _ = store.create(deck, title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    result = run_attempt(store, claimed, settings)
    assert result.outcome is Outcome.COMPLETED, result.error
    return job.id


def streams(video: Path) -> dict[str, dict[str, Any]]:
    found = ffprobe_json(FFPROBE, video, "-show_streams")["streams"]
    return {s["codec_type"]: s for s in found}


def ebur128(video: Path) -> tuple[float, float]:
    """Integrated loudness (LUFS) and true peak (dBTP) of the audio."""
    done = subprocess.run(
        [FFMPEG, "-hide_banner", "-nostats", "-i", str(video), "-map", "0:a", *EBUR128],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    summary = done.stderr[done.stderr.rindex("Summary:") :]
    integrated = float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))  # type: ignore[union-attr]
    peak = float(re.search(r"Peak:\s+(-?[\d.]+|-inf) dBFS", summary).group(1))  # type: ignore[union-attr]
    return integrated, peak


def samples(video: Path, tmp: Path) -> list[float]:
    """The audio's mono level per 1/1000 s window (absolute peak, 0..1)."""
    raw = tmp / "audio.raw"
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-i", str(video), "-map", "0:a", *MONO, str(raw)],
        check=True,
        timeout=60,
    )
    data = memoryview(raw.read_bytes()).cast("h")
    step = SAMPLE_RATE // 1000
    return [
        max(abs(v) for v in data[i : i + step]) / 32768 for i in range(0, len(data) - step, step)
    ]


def onsets(levels: list[float], threshold: float = 0.02, gap_ms: int = 150) -> list[int]:
    """Milliseconds where sound starts after at least ``gap_ms`` of quiet."""
    found: list[int] = []
    quiet = gap_ms
    for ms, level in enumerate(levels):
        if level >= threshold:
            if quiet >= gap_ms:
                found.append(ms)
            quiet = 0
        else:
            quiet += 1
    return found


def test_sentences_split_on_latin_and_cjk_ends() -> None:
    assert sentences("One. Two?  Three! four") == ["One.", "Two?", "Three!", "four"]
    assert sentences('He said "yes." Then left.') == ['He said "yes."', "Then left."]
    assert sentences("一つ。二つ？「三つ。」四つ！") == ["一つ。", "二つ？", "「三つ。」", "四つ！"]
    assert sentences(" \n ") == []
    assert sentences("no end") == ["no end"]


def test_subtitle_documents_are_well_formed() -> None:
    cues = [Cue("Hello <b> & you.", 0.0, 1.25), Cue("Two\nlines --> one", 1.25, 61.5)]
    vtt = webvtt(cues)
    assert vtt.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.250\nHello &lt;b> &amp; you.\n")
    assert "00:00:01.250 --> 00:01:01.500\nTwo lines → one\n" in vtt
    srt = subrip(cues)
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,250\nHello <b> & you.\n\n2\n")


def test_a_narrated_deck_has_a_normalised_track_timed_to_its_slides(
    store: JobStore, worker_settings: Settings, tmp_path: Path
) -> None:
    deck = narrated(["Hello there. This is the first slide.", None, "The last slide speaks."])
    job_id = render(store, worker_settings, deck)
    done = store.get(job_id)
    assert done.status is Status.COMPLETED and done.stage is Stage.DONE
    assert done.synth_seconds is not None and done.mix_seconds is not None
    assert {"subtitles.vtt", "subtitles.srt", "video.mp4"} <= set(done.created_files)
    folder = worker_settings.output_dir / job_id
    video = folder / "video.mp4"
    found = streams(video)
    audio, picture, text = found["audio"], found["video"], found["subtitle"]
    assert audio["codec_name"] == "aac" and audio["sample_rate"] == "48000"
    assert audio["channels"] == 2
    assert text["codec_name"] == "mov_text" and text["tags"]["language"] == "eng"
    frame = 1 / 30
    assert abs(float(audio["duration"]) - float(picture["duration"])) <= frame
    # Chapters and colour tags survive the remux.
    chapters = ffprobe_json(FFPROBE, video, "-show_chapters")["chapters"]
    assert [c["tags"]["title"] for c in chapters] == ["Slide 1", "Slide 2", "Slide 3"]
    assert picture["color_space"] == "bt709" and b"colrnclx" in video.read_bytes()
    # Loudness: -16 LUFS within 1 LU, true peak at most -1.5 dBTP.
    integrated, peak = ebur128(video)
    assert abs(integrated + 16) <= 1.0, integrated
    assert peak <= -1.5, peak
    # Speech starts at the first frame of each narrated slide.
    starts = [float(c["start_time"]) for c in chapters]
    heard = onsets(samples(video, tmp_path))
    for slide in (0, 2):
        near = [ms for ms in heard if abs(ms / 1000 - starts[slide]) <= 0.25]
        assert near, (slide, starts, heard)
        assert near[0] / 1000 >= starts[slide] - frame
    # The cues sit inside their slides.
    vtt = (folder / "subtitles.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n")
    times = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})", vtt)
    assert len(times) == 3
    ends = [*starts[1:], float(picture["duration"])]
    spans = [(starts[0], ends[0]), (starts[0], ends[0]), (starts[2], ends[2])]
    for (a, b), t in zip(spans, times, strict=True):
        begin = int(t[0]) * 3600 + int(t[1]) * 60 + int(t[2]) + int(t[3]) / 1000
        end = int(t[4]) * 3600 + int(t[5]) * 60 + int(t[6]) + int(t[7]) / 1000
        assert a - 0.001 <= begin < end <= b + 0.001


def test_a_silent_deck_has_no_audio_track(store: JobStore, worker_settings: Settings) -> None:
    job_id = render(store, worker_settings, small_deck(slides=2, duration=0.5))
    video = worker_settings.output_dir / job_id / "video.mp4"
    assert "audio" not in streams(video) and "subtitle" not in streams(video)
    done = store.get(job_id)
    assert done.synth_seconds is None and done.mix_seconds is None
    assert "subtitles.vtt" not in done.created_files


def test_an_explicit_duration_shorter_than_the_narration_fails_clearly(
    store: JobStore, worker_settings: Settings
) -> None:
    deck = narrated([None, "This sentence is far too long to be said in half a second."])
    deck["slides"][1]["duration"] = 0.5
    job, _ = store.create(deck, title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    result = run_attempt(store, claimed, worker_settings)
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert re.fullmatch(
        r"slide 2: its narration lasts \d+\.\d s, longer than its duration "
        r'of 0\.5 s \(use "auto"\)',
        result.error,
    ), result.error
    assert store.get(job.id).status is Status.FAILED
    assert not (worker_settings.output_dir / job.id).exists()


def test_a_rerender_synthesizes_nothing_again(store: JobStore, worker_settings: Settings) -> None:
    deck = narrated(["A sentence to cache. And a second one."])
    render(store, worker_settings, deck)
    cache = worker_settings.output_dir / CACHE_DIR

    def files() -> dict[Path, tuple[int, bytes]]:
        # A synthesis replaces the file (a new inode); a hit only renews its mtime.
        return {p: (p.stat().st_ino, p.read_bytes()) for p in cache.rglob("*.wav")}

    first = files()
    assert len(first) == 2
    render(store, worker_settings, deck)
    assert files() == first
    assert not [p for p in cache.rglob("*") if p.name.startswith(".synth-")]


def test_the_cache_keeps_what_is_used_and_the_sweeper_prunes_the_rest(
    store: JobStore, worker_settings: Settings
) -> None:
    from workers.speech import prune_cache
    from workers.sweeper import Sweeper

    deck = narrated(["Kept because it is used. Also kept."])
    render(store, worker_settings, deck)
    cache = worker_settings.output_dir / CACHE_DIR
    used = sorted(cache.rglob("*.wav"))
    old = time.time() - 30 * 86400
    unused = used[0].parent / ("0" * 64 + ".wav")
    shutil.copy(used[0], unused)
    dead = used[0].parent / ".synth-dead.wav"
    dead.write_bytes(b"half")
    for path in [*used, unused, dead]:
        os.utime(path, (old, old))
    render(store, worker_settings, deck)  # hits renew the used sentences
    Sweeper(store, worker_settings, "w@h", lambda *_: None).sweep_once(force_orphan_scan=True)
    assert sorted(cache.rglob("*.wav")) == used
    assert not unused.exists() and not dead.exists()
    assert prune_cache(worker_settings.output_dir, 7.0) == 0


def test_cues_are_clipped_to_their_slides() -> None:
    from workers.audio import SlideSound
    from workers.speech import Speech

    speech = Speech((Path("a.wav"),), (Cue("x", 0.0, 0.9),))
    cues = timed_cues([None, SlideSound(speech, None)], frame_counts([1.0, 0.5], 30), 30)
    assert cues == [Cue("x", 1.0, 1.5)]


def test_a_wav_written_by_espeak_is_read(tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "hello"], check=True, timeout=30)
    with wave.open(str(out)) as reader:
        assert reader.getnframes() > 0


def test_cancel_mid_synthesis_stops_the_job(store: JobStore, worker_settings: Settings) -> None:
    long_text = " ".join(f"Sentence number {n} of a long narration." for n in range(60))
    deck = narrated([long_text, long_text.replace("long", "longer")])
    job, _ = store.create(deck, title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None

    def cancel_when_synthesizing() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if store.get(job.id).stage is Stage.SYNTHESIZING:
                store.request_cancel(job.id)
                return
            time.sleep(0.02)

    canceller = threading.Thread(target=cancel_when_synthesizing)
    canceller.start()
    started = time.monotonic()
    result = run_attempt(store, claimed, worker_settings)
    canceller.join()
    assert result.outcome is Outcome.CANCELLED
    assert time.monotonic() - started < 10
    assert store.get(job.id).status is Status.CANCELLED
    assert not (worker_settings.output_dir / job.id).exists()
    mine = ["pgrep", "-P", str(os.getpid()), "espeak-ng"]
    children = subprocess.run(mine, capture_output=True, text=True)
    assert children.stdout.strip() == ""


def test_subtitles_are_served_once_completed_and_listed_on_the_dashboard(
    app: Any, client: Any, store: JobStore, worker_settings: Settings
) -> None:
    from tests.support.clients import assert_error, fetch

    job_id = client.post("/v1/jobs", json=narrated(["Served. Twice."])).get_json()["job_id"]
    assert_error(client.get(f"/v1/jobs/{job_id}/subtitles.vtt"), 404, "not_ready")
    claimed = store.claim(job_id, "w@h")
    assert claimed is not None
    assert run_attempt(store, claimed, worker_settings).outcome is Outcome.COMPLETED
    vtt = fetch(client, f"/v1/jobs/{job_id}/subtitles.vtt")
    assert vtt.status_code == 200
    assert vtt.headers["Content-Type"] == "text/vtt; charset=utf-8"
    assert vtt.get_data(as_text=True).startswith("WEBVTT\n\n1\n00:00:00.000 --> ")
    srt = fetch(client, f"/v1/jobs/{job_id}/subtitles.srt")
    assert srt.status_code == 200 and srt.mimetype == "application/x-subrip"
    assert srt.get_data(as_text=True).startswith("1\n00:00:00,000 --> ")
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert f"/v1/jobs/{job_id}/subtitles.vtt" in page and 'id="subtitle-links"' in page

    silent = client.post("/v1/jobs", json=small_deck(slides=1, duration=0.5)).get_json()
    claimed = store.claim(silent["job_id"], "w@h")
    assert claimed is not None
    assert run_attempt(store, claimed, worker_settings).outcome is Outcome.COMPLETED
    assert_error(client.get(f"/v1/jobs/{silent['job_id']}/subtitles.srt"), 404, "no_subtitles")


def tone(tmp: Path, seconds: float, frequency: int, name: str) -> Path:
    out = tmp / name
    sine = f"sine=frequency={frequency}:duration={seconds}:sample_rate=44100"
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", sine, str(out)],
        check=True,
        timeout=60,
    )
    return out


def audio_asset(store: JobStore, settings: Settings, source: Path) -> str:
    """An audio asset of the default tenant (stored directly: uploads sniff
    audio once feat-voices lands)."""
    import hashlib

    from core.sniff import Sniffed
    from storage.assets import AssetStore, incoming_dir
    from storage.models import DEFAULT_TENANT

    data = source.read_bytes()
    staged = incoming_dir(settings.output_dir) / source.name
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    asset, _ = AssetStore(store, settings.output_dir).add(
        DEFAULT_TENANT,
        staged,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        sniffed=Sniffed("wav"),  # type: ignore[arg-type]
        quota=None,
    )
    return asset.id


def band_levels(video: Path, tmp: Path, frequency: int) -> list[float]:
    """RMS per 10 ms of the audio around ``frequency`` only."""
    raw = tmp / "band.raw"
    band = f"bandpass=f={frequency}:width_type=h:w=200"
    band = f"{band},{band}"
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-y",
            "-i",
            str(video),
            "-map",
            "0:a",
            "-af",
            band,
            *MONO,
            str(raw),
        ],
        check=True,
        timeout=60,
    )
    data = memoryview(raw.read_bytes()).cast("h")
    step = SAMPLE_RATE // 100
    return [
        (sum(v * v for v in data[i : i + step]) / step) ** 0.5 / 32768
        for i in range(0, len(data) - step, step)
    ]


def test_music_is_looped_under_the_video_and_ducked_under_speech(
    store: JobStore, worker_settings: Settings, tmp_path: Path
) -> None:
    music = audio_asset(store, worker_settings, tone(tmp_path, 0.7, 7000, "music.wav"))
    deck = narrated(["Speech over the music, long enough to be heard.", None])
    deck["slides"][1]["duration"] = 2.0
    deck["options"]["music"] = {"asset": music, "volume": 0.5}
    job_id = render(store, worker_settings, deck)
    video = worker_settings.output_dir / job_id / "video.mp4"
    chapters = ffprobe_json(FFPROBE, video, "-show_chapters")["chapters"]
    speech_end = float(chapters[0]["end_time"]) - 0.5  # the padding
    total = float(chapters[-1]["end_time"])
    levels = band_levels(video, tmp_path, 7000)
    under_speech = levels[30 : int(speech_end * 100) - 20]
    in_the_gap = levels[int((speech_end + 1.0) * 100) : int(total * 100) - 10]
    speech_level = sum(under_speech) / len(under_speech)
    gap_level = sum(in_the_gap) / len(in_the_gap)
    assert gap_level > 0.01  # looped: 0.7 s of music still plays at the end
    assert speech_level < gap_level * 0.6, (speech_level, gap_level)
    integrated, peak = ebur128(video)
    assert abs(integrated + 16) <= 1.0 and peak <= -1.5


def test_uploaded_audio_sets_an_auto_slide_and_starts_on_its_first_frame(
    store: JobStore, worker_settings: Settings, tmp_path: Path
) -> None:
    clip = audio_asset(store, worker_settings, tone(tmp_path, 1.2, 440, "clip.wav"))
    # Speech first (loudnorm then works on a real signal), a silent slide,
    # then the clip: it must start on its slide's first frame.
    deck = narrated(["Speech first.", None, None])
    deck["slides"][2]["audio"] = clip
    del deck["slides"][2]["duration"]
    job_id = render(store, worker_settings, deck)
    done = store.get(job_id)
    vtt = (worker_settings.output_dir / job_id / "subtitles.vtt").read_text(encoding="utf-8")
    assert vtt.count(" --> ") == 1  # the speech's; the clip has no text
    assert "subtitles.vtt" in done.created_files
    video = worker_settings.output_dir / job_id / "video.mp4"
    chapters = ffprobe_json(FFPROBE, video, "-show_chapters")["chapters"]
    start = float(chapters[2]["start_time"])
    assert float(chapters[2]["end_time"]) - start == pytest.approx(1.2 + 0.5, abs=1 / 30)
    found = streams(video)
    assert abs(float(found["audio"]["duration"]) - float(found["video"]["duration"])) <= 1 / 30
    heard = [ms for ms in onsets(samples(video, tmp_path)) if ms / 1000 >= start - 0.2]
    assert heard and abs(heard[0] / 1000 - start) <= 1 / 30, (start, heard)


def test_an_unreadable_audio_asset_fails_naming_the_slide(
    store: JobStore, worker_settings: Settings, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\0\0\0\0WAVEjunk" * 10)
    deck = small_deck(slides=2, duration=1.0)
    deck["slides"][1]["audio"] = audio_asset(store, worker_settings, junk)
    job, _ = store.create(deck, title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    result = run_attempt(store, claimed, worker_settings)
    assert result.outcome is Outcome.FAILED and result.error is not None
    assert result.error.startswith("slide 2's audio: the audio cannot be decoded"), result.error


def test_a_pptx_deck_narrates_its_notes(
    store: JobStore, worker_settings: Settings, tmp_path: Path
) -> None:
    if shutil.which("soffice") is None:
        missing("LibreOffice is not installed (make libreoffice)")
    from storage.assets import AssetLimits, AssetStore
    from storage.models import DEFAULT_TENANT
    from tests.support.assets import pptx_with_content

    limits = AssetLimits.from_settings(worker_settings)
    asset, _ = AssetStore(store, worker_settings.output_dir).ingest(
        DEFAULT_TENANT, [pptx_with_content(2)], limits
    )
    deck = {
        "source": {"asset": asset.id},
        "slides": [{"narration": "Said instead of the notes."}],
        "options": {"resolution": "480p", "narrate": True},
    }
    job_id = render(store, worker_settings, deck)
    folder = worker_settings.output_dir / job_id
    vtt = (folder / "subtitles.vtt").read_text(encoding="utf-8")
    assert [line for line in vtt.splitlines() if line and line[0].isalpha()][1:] == [
        "Said instead of the notes.",
        "Notes of slide 2",
    ]
    found = streams(folder / "video.mp4")
    assert found["audio"]["codec_name"] == "aac" and found["subtitle"]["codec_name"] == "mov_text"
    chapters = ffprobe_json(FFPROBE, folder / "video.mp4", "-show_chapters")["chapters"]
    manifest = json.loads((folder / "slides.json").read_text(encoding="utf-8"))
    lengths = [float(c["end_time"]) - float(c["start_time"]) for c in chapters]
    for entry, length in zip(manifest["slides"], lengths, strict=True):
        assert entry["duration"] == pytest.approx(length, abs=0.001)
        assert entry["duration"] != 3.0
    assert abs(float(found["audio"]["duration"]) - float(found["video"]["duration"])) <= 1 / 30


def gray_frame(video: Path, seconds: float, size: tuple[int, int]) -> bytes:
    """The luma of the frame shown at ``seconds``."""
    done = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(video), "-ss", f"{seconds:.3f}", *GRAY_FRAME],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert len(done.stdout) == size[0] * size[1]
    return done.stdout


def band_brightness(frame: bytes, size: tuple[int, int]) -> tuple[int, int]:
    """Brightest and darkest luma in the bottom fifth of the frame."""
    width, height = size
    band = frame[width * (height * 4 // 5) :]
    return max(band), min(band)


def test_burnt_subtitles_are_drawn_while_their_cue_lasts(
    store: JobStore, worker_settings: Settings
) -> None:
    deck = narrated(["A sentence drawn into the picture.", None], burn_subtitles=True)
    deck["options"]["theme"] = "light"
    deck["slides"][1]["duration"] = 1.0
    job_id = render(store, worker_settings, deck)
    folder = worker_settings.output_dir / job_id
    video = folder / "video.mp4"
    size = (854, 480)
    chapters = ffprobe_json(FFPROBE, video, "-show_chapters")["chapters"]
    assert [c["tags"]["title"] for c in chapters] == ["Slide 1", "Slide 2"]
    vtt = (folder / "subtitles.vtt").read_text(encoding="utf-8")
    start, end = re.findall(r"(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})", vtt)[0]
    seconds = [int(t[6:8]) + int(t[9:]) / 1000 for t in (start, end)]
    during = band_brightness(gray_frame(video, sum(seconds) / 2, size), size)
    after = band_brightness(gray_frame(video, seconds[1] + 0.25, size), size)
    from PIL import Image

    with Image.open(folder / "slides" / "001.png") as slide:
        own = band_brightness(slide.convert("L").tobytes(), size)
    # The dark band (and white text) while the cue lasts; the slide as drawn after it.
    assert during[1] < 40 and during[0] > 200, (during, own)
    assert abs(after[1] - own[1]) <= 12 and abs(after[0] - own[0]) <= 12, (after, own)
    assert own[1] > 60
    picture = streams(video)["video"]
    assert picture["color_space"] == "bt709" and picture["color_range"] == "tv"
    assert b"colrnclx" in video.read_bytes()
    keyframes = ffprobe_json(FFPROBE,
        video, "-select_streams", "v", "-skip_frame", "nokey", "-show_frames", "-show_entries",
        "frame=pts_time",
    )["frames"]  # fmt: skip
    times = [round(float(f["pts_time"]), 3) for f in keyframes]
    assert round(float(chapters[1]["start_time"]), 3) in times


def test_a_cue_image_keeps_rtl_and_cjk_text_inside_the_frame() -> None:
    from workers.burn import cue_image
    from workers.fonts import font_chain

    fonts = font_chain(False)
    for text in ["مرحبا بكم في العرض التقديمي " * 6, "これは非常に長い字幕です。" * 12]:
        image = cue_image(text, (480, 854), fonts)
        assert image.size == (480, 854)
        alpha = image.getchannel("A")
        box = alpha.getbbox()
        assert box is not None and box[3] <= 854 and box[1] > 854 // 2
        white = image.convert("L").point(lambda v: 255 if v > 200 else 0).getbbox()
        assert white is not None and white[0] >= 480 * 0.04 and white[2] <= 480 * 0.96


def test_the_render_timeout_covers_synthesis_and_mixing(
    store: JobStore, worker_settings: Settings
) -> None:
    mine = ["pgrep", "-P", str(os.getpid())]
    # Children this process had before (another test's helper, such as
    # multiprocessing's resource tracker) are not this render's.
    before = set(subprocess.run(mine, capture_output=True, text=True).stdout.split())
    long_text = " ".join(f"Timed sentence {n} of a narration that runs long." for n in range(80))
    deck = narrated([long_text, long_text.replace("runs", "goes on")])
    deck["options"]["resolution"] = "480p"
    limited = worker_settings.model_copy(update={"render_timeout": 1.5, "heartbeat_interval": 0.1})
    job, _ = store.create(deck, title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    started = time.monotonic()
    result = run_attempt(store, claimed, limited)
    assert time.monotonic() - started < 1.5 + 2.0
    assert result.outcome is Outcome.FAILED
    assert result.error == "render timed out after 1.5 s (SLIDEFARM_RENDER_TIMEOUT)"
    failed = store.get(job.id)
    assert failed.stage in (Stage.SYNTHESIZING, Stage.ENCODING_VIDEO, Stage.MIXING)
    assert not (limited.output_dir / job.id).exists()
    partial = limited.output_dir / ".partial"
    assert not partial.exists() or list(partial.iterdir()) == []
    # No synthesizer, mixer or encoder of this render is left running.
    assert set(subprocess.run(mine, capture_output=True, text=True).stdout.split()) <= before


def test_progress_runs_through_the_sound_stages_and_never_decreases(
    store: JobStore, worker_settings: Settings
) -> None:
    deck = narrated(["First slide speaks.", "Second slide speaks too.", None, "Last."])
    job, _ = store.create(deck, title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    seen: list[tuple[float, Stage]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            current = store.get(job.id)
            seen.append((current.progress, current.stage))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert run_attempt(store, claimed, worker_settings).outcome is Outcome.COMPLETED
    finally:
        done.set()
        watcher.join()
    progress = [p for p, _ in seen]
    assert progress == sorted(progress)
    order = [
        Stage.RENDERING_SLIDES,
        Stage.SYNTHESIZING,
        Stage.ENCODING_VIDEO,
        Stage.MIXING,
        Stage.FINALIZING,
        Stage.DONE,
    ]
    stages = [s for _, s in seen]
    ranks = [order.index(s) for s in stages]
    assert ranks == sorted(ranks), stages
    assert Stage.MIXING in stages or Stage.SYNTHESIZING in stages


def test_a_deck_naming_audio_it_does_not_have_is_a_422_naming_the_field(client: Any) -> None:
    from tests.support.clients import assert_error

    deck = small_deck(slides=2)
    deck["slides"][1]["audio"] = "00000000-0000-4000-8000-000000000001"
    deck["options"]["music"] = {"asset": "00000000-0000-4000-8000-000000000002"}
    error = assert_error(client.post("/v1/jobs", json=deck), 422, "validation_failed")
    assert [(d["field"], d["type"]) for d in error["details"]] == [
        ("slides.1.audio", "asset_not_found"),
        ("options.music.asset", "asset_not_found"),
    ]


def test_burned_subtitles_are_checked_for_glyphs_like_every_drawn_text() -> None:
    from core.deck import Deck
    from workers.slides import missing_glyphs

    text = "A hieroglyph \U00013000 spoken."
    spoken = Deck.model_validate(narrated([text]))
    assert missing_glyphs(spoken) is None  # only heard: no glyph needed
    burned = Deck.model_validate(narrated([text], burn_subtitles=True))
    assert missing_glyphs(burned) == (
        "no font covers U+13000 '\U00013000' (EGYPTIAN HIEROGLYPH A001) on slide 1"
    )
