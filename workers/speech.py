"""A slide's narration as speech: sentences, each synthesized once (cached).

The spoken text (``Slide.spoken``) is split into sentences; each is spoken by
``workers.voices.synthesize`` into a WAV kept under
``<output>/.cache/speech/<hash[:2]>/<hash>.wav``, where the hash is the
SHA-256 of the voice id, the engine's version and the sentence. A retry, a
re-render or another deck saying the same sentence with the same voice never
synthesizes it again. Each sentence's start and end inside the slide come from
the real WAV durations (the sentences play back to back), for subtitles.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from workers import voices

#: Where the speech cache lives, under the output folder.
CACHE_DIR = Path(".cache") / "speech"

# A sentence ends at . ! ? or … followed by space (closing quotes and
# brackets stay with it), or at a CJK full stop, exclamation or question mark
# (no space follows those); a blank line ends one too.
_END = ".!?\u2026"  # . ! ? …
_CLOSE = "\"')\\]\u201d\u2019\u00bb"  # quotes and brackets after an end
_CJK_END = "\u3002\uff01\uff1f"  # CJK full stop, exclamation and question marks
_CJK_CLOSE = "\u300d\u300f\uff09\u201d"  # CJK closing brackets and quote
_BREAK = re.compile(
    rf"(?<=[{_END}][{_CLOSE}])\s+|(?<=[{_END}])\s+"
    rf"|(?<=[{_CJK_END}][{_CJK_CLOSE}])\s*|(?<=[{_CJK_END}])(?![{_CJK_CLOSE}])\s*|\n\s*\n"
)


class SpeechStopped(Exception):
    """Synthesis stopped on request (cancel, lost lease, timeout)."""


@dataclass(frozen=True)
class Cue:
    """One sentence and where it is spoken, in seconds from its slide's start."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Speech:
    """A slide's speech: one WAV per sentence, in order, and its cues."""

    files: tuple[Path, ...]
    cues: tuple[Cue, ...]

    @property
    def seconds(self) -> float:
        return self.cues[-1].end if self.cues else 0.0


def sentences(text: str) -> list[str]:
    """``text`` split into sentences, whitespace collapsed; never an empty
    sentence, and ``[]`` only for blank text."""
    parts = [" ".join(p.split()) for p in _BREAK.split(text)]
    return [p for p in parts if p]


def wav_seconds(path: Path) -> float:
    """How long a WAV file plays."""
    with wave.open(str(path), "rb") as reader:
        return reader.getnframes() / reader.getframerate()


@cache
def _engine_version(engine: str) -> str:
    # Cheap (one short process per worker): a new engine voices differently.
    binary = shutil.which(engine)
    if binary is None:
        return ""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def cache_key(voice_id: str, text: str) -> str:
    """The cache key of ``text`` spoken by ``voice_id``."""
    engine = voice_id.partition(":")[0]
    blob = "\0".join([voice_id, _engine_version(engine), text])
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_wav(
    output_dir: Path,
    voice_id: str,
    text: str,
    should_stop: Callable[[], bool] | None = None,
    on_synthesized: Callable[[float], None] | None = None,
) -> Path:
    """The WAV of ``text`` spoken by ``voice_id``: from the cache, else
    synthesized into it (atomically: a temporary file renamed into place, so a
    reader never sees half a file and a killed synthesis leaves none).
    ``on_synthesized`` gets the seconds of speech made (never for a cache hit)."""
    key = cache_key(voice_id, text)
    path = output_dir / CACHE_DIR / key[:2] / f"{key}.wav"
    if path.is_file():
        try:
            os.utime(path)  # used now: the cache keeps what is used (prune_cache)
            return path
        except FileNotFoundError:
            pass  # pruned this very moment: speak it again

    if should_stop is not None and should_stop():
        raise SpeechStopped()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".synth-", suffix=".wav", dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        voices.synthesize(voice_id, text, temporary, should_stop)
        if should_stop is not None and should_stop():
            raise SpeechStopped()
        made = wav_seconds(temporary)  # a WAV we can read, or an error before it is cached
        os.replace(temporary, path)
        if on_synthesized is not None:
            on_synthesized(made)
    finally:
        temporary.unlink(missing_ok=True)
    return path


#: A synthesis's temporary file older than this belongs to a worker that died.
STALE_TEMPORARY = 3600.0


def prune_cache(output_dir: Path, days: float, *, now: float | None = None) -> int:
    """Delete cached speech unused for ``days`` (a hit renews a file's
    mtime) and temporary files of syntheses that died; the count removed.
    A job that needs a pruned sentence speaks it again."""
    root = output_dir / CACHE_DIR
    if not root.is_dir():
        return 0
    now = time.time() if now is None else now
    cutoff, stale = now - days * 86400.0, now - STALE_TEMPORARY
    removed = 0
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:
                continue
            temporary = entry.name.startswith(".synth-")
            if mtime < (stale if temporary else cutoff):
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def speak(
    output_dir: Path,
    voice_id: str,
    text: str,
    should_stop: Callable[[], bool] | None = None,
    on_synthesized: Callable[[float], None] | None = None,
) -> Speech:
    """``text`` spoken by ``voice_id``, sentence by sentence (see the module);
    ``on_synthesized`` as for :func:`cached_wav`."""
    files: list[Path] = []
    cues: list[Cue] = []
    at = 0.0
    for sentence in sentences(text):
        if should_stop is not None and should_stop():
            raise SpeechStopped()
        wav = cached_wav(output_dir, voice_id, sentence, should_stop, on_synthesized)
        seconds = wav_seconds(wav)
        files.append(wav)
        cues.append(Cue(sentence, at, at + seconds))
        at += seconds
    return Speech(tuple(files), tuple(cues))
