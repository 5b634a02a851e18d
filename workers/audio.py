"""A deck's sound track (docs/design.md, "Sound"): timing, mixing, loudness,
subtitles and the mux into the MP4, all with the ffmpeg imageio-ffmpeg ships.

1. Each slide's audio (its sentences back to back, an uploaded asset from
   the same start) becomes one 48 kHz stereo WAV exactly as long as the
   slide, from its first frame (the video's own :func:`frame_counts`, and
   48000 samples a second divide into frames at 24, 25 and 30 fps), with a
   20 ms fade at both ends so no cut clicks; the slides are joined into one
   narration WAV, silence where a slide has none.
2. Music, if any, is looped under the whole video at its volume and ducked
   under the narration (``sidechaincompress`` keyed by the narration).
3. The mix is normalised to -16 LUFS integrated with true peaks at most
   -1.5 dBTP: its loudness measured by ``ebur128``, the gain that asks for
   applied before a limiter running at 4x the sample rate, the gain corrected
   once by a second measurement (see :func:`_normalising`); then encoded
   AAC 48 kHz stereo and muxed with the video stream copied, the chapters
   and colour tags kept, and the subtitles as a ``mov_text`` track.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.deck import Deck
from workers.burn import cue_images, overlay_graph
from workers.fonts import FontChain
from workers.speech import Cue, Speech, wav_seconds
from workers.video import (
    EncodeError,
    ffmpeg_command,
    frame_counts,
    run_ffmpeg,
    slide_starts,
    x264_args,
)

#: The asset kinds a slide's audio or the music may be. Switch to

SAMPLE_RATE = 48_000
CHANNELS = 2
#: Loudness targets: integrated LUFS, true peak dBTP, loudness range LU.
TARGET_I = -16.0
TARGET_TP = -1.5
#: The limiter's ceiling: below the target, as AAC's encoding overshoots
#: the peaks of what it is given by a few tenths of a dB.
LIMIT_TP = -2.5
#: Fade at each end of a slide's audio, in seconds.
EDGE_FADE = 0.02
#: Below this integrated loudness the track is silence: not normalised.
SILENT_LUFS = -70.0

#: ISO 639-1 to 639-2/T, for the subtitle track's language tag (MP4 wants three letters).
_ISO639_2 = {
    "ar": "ara", "bg": "bul", "ca": "cat", "cs": "ces", "cy": "cym", "da": "dan",
    "de": "deu", "el": "ell", "en": "eng", "eo": "epo", "es": "spa", "et": "est",
    "eu": "eus", "fa": "fas", "fi": "fin", "fr": "fra", "ga": "gle", "he": "heb",
    "hi": "hin", "hr": "hrv", "hu": "hun", "hy": "hye", "id": "ind", "is": "isl",
    "it": "ita", "ja": "jpn", "ka": "kat", "ko": "kor", "la": "lat", "lt": "lit",
    "lv": "lav", "mk": "mkd", "ms": "msa", "nb": "nob", "nl": "nld", "no": "nor",
    "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus", "sk": "slk", "sl": "slv",
    "sq": "sqi", "sr": "srp", "sv": "swe", "sw": "swa", "ta": "tam", "th": "tha",
    "tr": "tur", "uk": "ukr", "ur": "urd", "vi": "vie", "zh": "zho", "cmn": "zho",
    "yue": "zho",
}  # fmt: skip


class SoundError(Exception):
    """The deck's sound cannot be made (an unreadable audio asset, a slide
    shorter than its audio, too long a video): retrying would not help."""


@dataclass(frozen=True)
class SlideSound:
    """What one slide plays: its speech and/or its uploaded audio (decoded)."""

    speech: Speech | None
    asset: Path | None
    asset_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        spoken = self.speech.seconds if self.speech is not None else 0.0
        return max(spoken, self.asset_seconds)

    @property
    def cues(self) -> tuple[Cue, ...]:
        return self.speech.cues if self.speech is not None else ()


def language_tag(language: str) -> str:
    """A voice's language (``en-us``) as an MP4 language tag (``eng``)."""
    primary = language.lower().replace("_", "-").split("-")[0]
    if len(primary) == 3 and primary.isalpha():
        return _ISO639_2.get(primary, primary)
    return _ISO639_2.get(primary, "und")


def _ignore(_seconds: float) -> None:
    return None


def decode(
    source: Path, out: Path, what: str, scratch: Path, should_stop: Callable[[], bool] | None
) -> float:
    """Decode an uploaded audio file to a 48 kHz stereo WAV at ``out`` and say
    how long it plays; :class:`SoundError` naming ``what`` if ffmpeg cannot."""
    cmd = [
        *ffmpeg_command(),
        "-i",
        str(source),
        "-map",
        "0:a:0",
        "-vn",
        "-ac",
        str(CHANNELS),
        "-ar",
        str(SAMPLE_RATE),
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
        str(out),
    ]
    try:
        run_ffmpeg(cmd, scratch, _ignore, should_stop)
    except EncodeError as error:
        raise SoundError(f"{what}: the audio cannot be decoded ({error})") from error
    seconds = wav_seconds(out)
    if seconds <= 0:
        raise SoundError(f"{what}: the audio is empty")
    return seconds


def slide_durations(
    deck: Deck, sounds: Sequence[SlideSound | None], max_seconds: float
) -> list[float]:
    """Each slide's seconds on screen, given its sound: ``auto`` (or unset,
    with sound) is its audio plus ``narration_padding``, rounded up to a whole
    frame; an explicit duration shorter than its audio is a
    :class:`SoundError`, a longer one pads with silence."""
    fps = deck.options.fps
    padding = deck.options.narration_padding
    durations: list[float] = []
    for n, (slide, sound) in enumerate(zip(deck.slides, sounds, strict=True), start=1):
        if sound is None:
            durations.append(slide.seconds)
            continue
        audio = sound.seconds
        if isinstance(slide.duration, float):
            shown = max(1, round(slide.duration * fps)) / fps
            if audio > shown + 1e-6:
                kind = "narration" if sound.speech is not None else "audio"
                raise SoundError(
                    f"slide {n}: its {kind} lasts {audio:.1f} s, longer than its duration "
                    f'of {slide.duration:g} s (use "auto")'
                )
            durations.append(slide.duration)
        else:
            durations.append(max(1, math.ceil((audio + padding) * fps - 1e-6)) / fps)
    total = sum(frame_counts(durations, fps)) / fps
    if total > max_seconds:
        raise SoundError(
            f"the video would last {total:.1f} s with its sound, more than the "
            f"{max_seconds:g} s allowed (SLIDEFARM_MAX_VIDEO_SECONDS)"
        )
    return durations


def _slide_track(
    sound: SlideSound,
    samples: int,
    out: Path,
    scratch: Path,
    should_stop: Callable[[], bool] | None,
) -> None:
    """One slide's audio as a 48 kHz stereo WAV of exactly ``samples`` samples."""
    cmd = ffmpeg_command()
    labels: list[str] = []
    parts: list[str] = []
    files = list(sound.speech.files) if sound.speech is not None else []
    for path in files:
        cmd += ["-i", str(path)]
    common = f"aresample={SAMPLE_RATE},aformat=sample_fmts=s16:channel_layouts=stereo"
    for i in range(len(files)):
        parts.append(f"[{i}:a]{common}[s{i}]")
    if files:
        joined = "".join(f"[s{i}]" for i in range(len(files)))
        parts.append(f"{joined}concat=n={len(files)}:v=0:a=1[speech]")
        labels.append("[speech]")
    if sound.asset is not None:
        cmd += ["-i", str(sound.asset)]
        parts.append(f"[{len(files)}:a]{common}[asset]")
        labels.append("[asset]")
    if len(labels) == 2:
        parts.append("[speech][asset]amix=inputs=2:duration=longest:normalize=0[both]")
        source = "[both]"
    else:
        source = labels[0]
    seconds = samples / SAMPLE_RATE
    fade = min(EDGE_FADE, seconds / 4)
    parts.append(
        f"{source}apad=whole_len={samples},atrim=end_sample={samples},"
        f"afade=t=in:st=0:d={fade:.4f},afade=t=out:st={seconds - fade:.6f}:d={fade:.4f},"
        f"{common}[out]"
    )
    cmd += ["-filter_complex", ";".join(parts), "-map", "[out]", "-c:a", "pcm_s16le", str(out)]
    run_ffmpeg(cmd, scratch, _ignore, should_stop)


def narration_track(
    sounds: Sequence[SlideSound | None],
    frames: Sequence[int],
    fps: int,
    out: Path,
    scratch: Path,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """The whole video's narration WAV at ``out`` (each slide's audio from
    its first frame, silence elsewhere); returns its length in samples."""
    per_frame = SAMPLE_RATE // fps
    total = sum(frames) * per_frame
    with wave.open(str(out), "wb") as writer:
        writer.setnchannels(CHANNELS)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        silence_block = b"\0" * (CHANNELS * 2 * per_frame)
        for n, (sound, count) in enumerate(zip(sounds, frames, strict=True), start=1):
            samples = count * per_frame
            if sound is None:
                for _ in range(count):
                    writer.writeframes(silence_block)
                continue
            piece = scratch / f"slide-{n:03d}.wav"
            _slide_track(sound, samples, piece, scratch, should_stop)
            with wave.open(str(piece), "rb") as reader:
                data = reader.readframes(samples)
            data = data[: samples * CHANNELS * 2]
            data += b"\0" * (samples * CHANNELS * 2 - len(data))
            writer.writeframes(data)
            piece.unlink()
    return total


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def timed_cues(sounds: Sequence[SlideSound | None], frames: Sequence[int], fps: int) -> list[Cue]:
    """Every sentence's cue in the video's time, each inside its slide."""
    cues: list[Cue] = []
    for sound, start, count in zip(sounds, slide_starts(frames), frames, strict=True):
        if sound is None:
            continue
        begin, end = start / fps, (start + count) / fps
        for cue in sound.cues:
            cues.append(Cue(cue.text, min(begin + cue.start, end), min(begin + cue.end, end)))
    return cues


def _cue_text(text: str) -> str:
    # A blank line would end the cue early; "-->" would read as timing.
    return re.sub(r"\s*\n\s*", " ", text).replace("-->", "→").strip()


def webvtt(cues: Sequence[Cue]) -> str:
    """The cues as a WebVTT document."""
    lines = ["WEBVTT", ""]
    for n, cue in enumerate(cues, start=1):
        text = _cue_text(cue.text).replace("&", "&amp;").replace("<", "&lt;")
        lines += [
            str(n),
            f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}",
            text,
            "",
        ]
    return "\n".join(lines)


def subrip(cues: Sequence[Cue]) -> str:
    """The cues as a SubRip document."""
    lines: list[str] = []
    for n, cue in enumerate(cues, start=1):
        lines += [
            str(n),
            f"{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}",
            _cue_text(cue.text),
            "",
        ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Burn:
    """Subtitles to draw into the picture: one PNG per cue, and how to
    re-encode the video (its frames per slide and x264 preset)."""

    images: list[Path]
    cues: list[Cue]
    frames: list[int]
    preset: str


@dataclass(frozen=True)
class Music:
    """Decoded background music and its gain."""

    path: Path
    volume: float


def _mix_graph(music: Music | None, samples: int, tail: str) -> str:
    if music is None:
        head = "[1:a]anull[mix]"
    else:
        head = (
            "[1:a]asplit=2[voice][key];"
            f"[2:a]volume={music.volume:.4f},atrim=end_sample={samples}[bed];"
            "[bed][key]sidechaincompress=threshold=0.01:ratio=12:attack=10:release=400[ducked];"
            "[voice][ducked]amix=inputs=2:duration=first:normalize=0[mix]"
        )
    # A filter's output timestamps may jump (loudnorm's did: a gap of a few
    # frames, which the MP4 keeps as a hole): the samples are renumbered.
    fmt = f"aresample={SAMPLE_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo,asetpts=N/SR/TB"
    return f"{head};[mix]{tail}{fmt},apad=whole_len={samples},atrim=end_sample={samples}[a]"


def _inputs(video: Path, narration: Path, music: Music | None) -> list[str]:
    cmd = ["-i", str(video), "-i", str(narration)]
    if music is not None:
        cmd += ["-stream_loop", "-1", "-i", str(music.path)]
    return cmd


def _limited(gain: float) -> str:
    # The gain, then a limiter at 4x the rate, where its sample peaks are
    # the true peaks a meter sees (within a fraction of a dB).
    return (
        f"volume={gain:.3f}dB,aresample={4 * SAMPLE_RATE},"
        f"alimiter=limit={10 ** (LIMIT_TP / 20):.4f}:attack=1:release=50:level=false,"
        f"aresample={SAMPLE_RATE},"
    )


def _loudness(
    video: Path,
    narration: Path,
    music: Music | None,
    samples: int,
    scratch: Path,
    should_stop: Callable[[], bool] | None,
    chain: str,
) -> float | None:
    """The integrated loudness (ebur128, LUFS) of the mix after ``chain``;
    ``None`` for silence."""
    cmd = [
        *ffmpeg_command(),
        *_inputs(video, narration, music),
        "-filter_complex",
        _mix_graph(music, samples, chain + "ebur128=peak=true,"),
        "-map",
        "[a]",
        "-loglevel",
        "info",
        "-f",
        "null",
        "-",
    ]
    run_ffmpeg(cmd, scratch, _ignore, should_stop)
    log = (scratch / "stderr.log").read_text("utf-8", "replace")
    if "Summary:" not in log:
        raise EncodeError("ebur128 printed no summary")
    found = re.search(r"I:\s+(-?[\d.]+|-inf) LUFS", log[log.rindex("Summary:") :])
    if found is None or found.group(1) == "-inf" or float(found.group(1)) < SILENT_LUFS:
        return None
    return float(found.group(1))


def _normalising(
    video: Path,
    narration: Path,
    music: Music | None,
    samples: int,
    scratch: Path,
    should_stop: Callable[[], bool] | None,
) -> str:
    """The filters that bring the mix to :data:`TARGET_I` under
    :data:`LIMIT_TP`: the gain its measured loudness asks for and a limiter,
    the gain corrected once by what the limiter took (speech loses well
    under a dB there); ``""`` for silence."""
    level = _loudness(video, narration, music, samples, scratch, should_stop, "")
    if level is None:
        return ""
    gain = TARGET_I - level
    limited = _loudness(video, narration, music, samples, scratch, should_stop, _limited(gain))
    if limited is not None:
        gain += TARGET_I - limited
    return _limited(gain)


def mix_and_mux(
    video: Path,
    narration: Path,
    samples: int,
    music: Music | None,
    subtitles: Path | None,
    language: str,
    fps: int,
    output: Path,
    scratch: Path,
    should_stop: Callable[[], bool] | None = None,
    burn: Burn | None = None,
) -> None:
    """Mix the narration (and music), normalise it and mux it with ``video``
    (its stream copied; re-encoded with the cues drawn in when ``burn``) and
    the SubRip ``subtitles`` into ``output``."""
    normalise = _normalising(video, narration, music, samples, scratch, should_stop)
    cmd = [*ffmpeg_command(), *_inputs(video, narration, music)]
    subtitle_input = 3 if music is not None else 2
    if subtitles is not None:
        cmd += ["-f", "srt", "-i", str(subtitles)]
    graph = _mix_graph(music, samples, normalise)
    video_map, video_codec = "0:v", ["-c:v", "copy"]
    if burn is not None:
        first = subtitle_input + (1 if subtitles is not None else 0)
        for image in burn.images:
            cmd += ["-i", str(image)]
        graph += ";" + overlay_graph(burn.cues, first)
        video_map, video_codec = "[v]", x264_args(burn.preset, fps, burn.frames)
    cmd += ["-filter_complex", graph, "-map", video_map, "-map", "[a]"]
    if subtitles is not None:
        cmd += [
            "-map",
            f"{subtitle_input}:s",
            "-c:s",
            "mov_text",
            "-metadata:s:s:0",
            f"language={language}",
        ]
    cmd += [
        "-map_chapters",
        "0",
        "-map_metadata",
        "0",
        *video_codec,
        "-c:a",
        "aac",
        "-b:a",
        "160k",
        "-ar",
        str(SAMPLE_RATE),
        "-ac",
        str(CHANNELS),
        "-movie_timescale",
        str(fps * 1000),
        "-movflags",
        "+faststart",
        str(output),
    ]
    run_ffmpeg(cmd, scratch, _ignore, should_stop)


def add_sound(
    video: Path,
    sounds: Sequence[SlideSound | None],
    durations: Sequence[float],
    fps: int,
    music: Music | None,
    cues: Sequence[Cue],
    language: str,
    should_stop: Callable[[], bool] | None = None,
    *,
    burn_fonts: FontChain | None = None,
    size: tuple[int, int] = (0, 0),
    preset: str = "veryfast",
) -> None:
    """Give ``video`` (made from ``durations``) its sound track and, when
    ``cues``, its subtitle track, replacing the file atomically; with
    ``burn_fonts``, the cues are drawn into the picture too."""
    frames = frame_counts(durations, fps)
    with tempfile.TemporaryDirectory(prefix="slidefarm-audio-") as folder:
        scratch = Path(folder)
        narration = scratch / "narration.wav"
        samples = narration_track(sounds, frames, fps, narration, scratch, should_stop)
        subtitles = None
        if cues:
            subtitles = scratch / "subtitles.srt"
            subtitles.write_text(subrip(cues), encoding="utf-8")
        burn = None
        if burn_fonts is not None and cues:
            images = cue_images(cues, size, burn_fonts, scratch)
            burn = Burn(images, list(cues), frames, preset)
        mixed = video.with_name(video.stem + ".sound.mp4")
        try:
            mix_and_mux(
                video,
                narration,
                samples,
                music,
                subtitles,
                language,
                fps,
                mixed,
                scratch,
                should_stop,
                burn,
            )
            os.replace(mixed, video)
        finally:
            mixed.unlink(missing_ok=True)
