"""The voices a render host speaks with: offline text-to-speech engines, each
run as a separate process (nothing leaves the machine).

A voice id is ``<engine>:<name>`` (``core.deck.VOICE_PATTERN``):

- ``espeak-ng:<language>`` for every language espeak-ng has (Debian package
  ``espeak-ng``; one short-lived process per utterance).
- ``piper:<model>`` (e.g. ``piper:en_US-joe-medium``) for every Piper voice
  package installed beside ``piper-tts`` (the optional ``piper`` extra).
  Piper is GPL: slidefarm never imports it. Each worker process keeps one
  long-lived ``python -m piper`` child per voice (the model is loaded once,
  not per job), feeds it one line of text per utterance and reads back the
  file it wrote; a child that died is started again, and every child is
  killed when the worker process ends (:func:`close_voices`, also at exit).
  A child's environment holds none of the worker's settings or secrets.

``synthesize`` returns the seconds of audio it wrote; the caller records them
with :func:`record_synthesized` (``slidefarm_speech_seconds_total``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from storage import counters
from storage.db import Database, HasDatabase, database_of

log = logging.getLogger(__name__)

ESPEAK = "espeak-ng"
PIPER = "piper"
#: The voice a deck gets when it names none and the host has it.
DEFAULT_VOICE = "espeak-ng:en"
#: What a text with nothing to pronounce (no letter or digit) becomes: silence.
SILENT_SECONDS = 0.25
#: Seconds one synthesis may take before it is killed.
SYNTH_TIMEOUT = 120.0


class VoiceUnavailable(Exception):
    """This host has no such voice (or no engine for it).

    Retryable: another render host may have the voice (submission already
    refused decks whose voice no live worker offers), so the job may go back
    to the queue; its attempt limit bounds that."""

    retryable = True


#: What a job that needs speech fails with on a host without any engine.
NO_ENGINE = "speech needs espeak-ng or Piper on the render host"


class SynthesisFailed(Exception):
    """The engine could not speak the text."""


@dataclass(frozen=True)
class Voice:
    """One voice: its id, engine, display name, language (BCP 47-ish, e.g.
    ``en-us``) and what the engine calls it."""

    id: str
    engine: str
    name: str
    language: str
    engine_voice: str


@cache
def _espeak() -> str | None:
    return shutil.which(ESPEAK)


@cache
def available_voices() -> tuple[Voice, ...]:
    """Every voice this host can speak with (read once per process)."""
    voices = {v.id: v for v in _espeak_voices()}
    voices.update((v.id, v) for v in _piper_voices().values())
    return tuple(sorted(voices.values(), key=lambda v: v.id))


def _espeak_voices() -> tuple[Voice, ...]:
    binary = _espeak()
    if binary is None:
        return ()
    listed = subprocess.run(
        [binary, "--voices"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.splitlines()[1:]
    voices: dict[str, Voice] = {}
    aliases: dict[str, tuple[int, Voice]] = {}
    for line in listed:
        parts = line.split()
        if len(parts) < 5:
            continue
        language, name = parts[1], parts[3].replace("_", " ")
        voice = Voice(f"{ESPEAK}:{language}", ESPEAK, name, language, language)
        voices[voice.id] = voice
        # "(en 2)(en-gb 3)": other languages it speaks, best first by priority.
        for alias, priority in re.findall(r"\(([A-Za-z0-9-]+) (\d+)\)", line):
            if alias not in aliases or int(priority) < aliases[alias][0]:
                aliases[alias] = (int(priority), voice)
    for alias, (_, voice) in aliases.items():
        key = f"{ESPEAK}:{alias}"
        if key not in voices:
            voices[key] = Voice(key, ESPEAK, voice.name, alias, voice.engine_voice)
    return tuple(sorted(voices.values(), key=lambda v: v.id))


def default_voice() -> str | None:
    """The voice a deck that names none gets here, if any."""
    ids = [v.id for v in available_voices()]
    return DEFAULT_VOICE if DEFAULT_VOICE in ids else (ids[0] if ids else None)


def synthesize(
    voice_id: str, text: str, out: Path, should_stop: Callable[[], bool] | None = None
) -> float:
    """Speak ``text`` with ``voice_id`` into the WAV file ``out`` (mono, the
    engine's sample rate); return the seconds of audio written. A text with
    no letter or digit is :data:`SILENT_SECONDS` of silence.
    :class:`VoiceUnavailable` for a voice this host lacks (:data:`NO_ENGINE`
    when it has no engine at all), :class:`SynthesisFailed` if the engine
    fails."""
    voice = {v.id: v for v in available_voices()}.get(voice_id)
    if voice is None:
        if not available_voices():
            raise VoiceUnavailable(NO_ENGINE)
        raise VoiceUnavailable(f"this render host has no voice {voice_id!r}")
    if not any(c.isalnum() for c in text):
        # Nothing to pronounce ("...", an emoji): silence, not an engine's
        # crash (Piper's CLI dies writing an empty WAV) or a spelled-out dot.
        _silence(out, SILENT_SECONDS)
    elif voice.engine == PIPER:
        _piper_child(voice).speak(text, out, should_stop)
    else:
        _espeak_speak(voice, text, out)
    return wav_seconds(out)


def _silence(out: Path, seconds: float, rate: int = 22050) -> None:
    with wave.open(str(out), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(bytes(2 * round(seconds * rate)))


def wav_seconds(path: Path) -> float:
    """The length of the WAV file ``path`` in seconds."""
    try:
        with wave.open(str(path), "rb") as audio:
            return audio.getnframes() / float(audio.getframerate())
    except (OSError, EOFError, wave.Error) as error:
        raise SynthesisFailed(f"the engine wrote no readable WAV: {error}") from error


def record_synthesized(db: Database | HasDatabase, voice_id: str, seconds: float) -> None:
    """Count ``seconds`` of speech made with ``voice_id`` in
    ``slidefarm_speech_seconds_total{engine}`` (a counter row in ``db``, e.g.
    the job store, which /metrics reads). Call it after each
    :func:`synthesize`, or once per job with the sum."""
    engine = voice_id.split(":", 1)[0]
    with database_of(db).transaction() as conn:
        counters.add(conn, {f"{counters.SPEECH_PREFIX}{engine}": seconds})


def _espeak_speak(voice: Voice, text: str, out: Path) -> None:
    binary = _espeak()
    voice_id = voice.id
    if binary is None:
        raise VoiceUnavailable(f"this render host has no voice {voice_id!r}")
    try:
        subprocess.run(
            [binary, "-v", voice.engine_voice, "-w", str(out), "--stdin"],
            input=text.encode(),
            capture_output=True,
            timeout=SYNTH_TIMEOUT,
            check=True,
        )
    except subprocess.TimeoutExpired as error:
        raise SynthesisFailed(f"{voice_id} took longer than {SYNTH_TIMEOUT:g} s") from error
    except subprocess.CalledProcessError as error:
        raise SynthesisFailed(
            f"{voice_id} failed: {error.stderr.decode(errors='replace')[:200]}"
        ) from error


# -- Piper -------------------------------------------------------------------

_PIPER_DIST = "piper-tts"
#: What a Piper child inherits of the worker's environment.
_PIPER_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS", "PYTHONPATH")


@cache
def _piper_voices() -> dict[str, Voice]:
    """Piper voices from installed voice packages: a distribution whose name
    has ``piper`` in it (not piper-tts itself) shipping ``<model>.onnx`` with
    its ``<model>.onnx.json``. Only metadata is read; nothing is imported."""
    try:
        metadata.distribution(_PIPER_DIST)
    except metadata.PackageNotFoundError:
        return {}
    found: dict[str, Voice] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if "piper" not in name or name == _PIPER_DIST:
            continue
        for file in dist.files or ():
            if not file.name.endswith(".onnx.json"):
                continue
            config = Path(str(dist.locate_file(file)))
            model = config.with_suffix("")
            if not model.is_file():
                continue
            try:
                language = json.loads(config.read_text())["language"]["code"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            stem = model.stem
            voice = Voice(
                f"{PIPER}:{stem}", PIPER, stem, str(language).replace("_", "-").lower(), str(model)
            )
            found[voice.id] = voice
    return found


class _PiperChild:
    """One long-lived ``python -m piper`` for one voice: a line of text in,
    ``Wrote <file>`` on its stderr when that utterance's WAV is complete."""

    def __init__(self, voice: Voice) -> None:
        self.voice = voice
        self.owner = os.getpid()
        self.folder = Path(tempfile.mkdtemp(prefix="slidefarm-piper-"))
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.lock = threading.Lock()
        # None of the worker's settings or secrets (DATABASE_URL, brokers, keys).
        env = {k: os.environ[k] for k in _PIPER_ENV if k in os.environ}
        env.update(PYTHONIOENCODING="utf-8", PYTHONDONTWRITEBYTECODE="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "piper", "-m", voice.engine_voice, "-d", str(self.folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.folder,
            start_new_session=True,
        )
        assert self.process.stderr is not None
        threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def speak(self, text: str, out: Path, should_stop: Callable[[], bool] | None) -> None:
        line = " ".join(text.split())
        if not line:
            raise SynthesisFailed("nothing to say: the text is blank")
        with self.lock:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(line.encode() + b"\n")
                self.process.stdin.flush()
            except OSError as error:
                self.close()
                raise SynthesisFailed(f"{self.voice.id} is not running: {error}") from error
            deadline = time.monotonic() + SYNTH_TIMEOUT
            tail: list[str] = []
            while True:
                if should_stop is not None and should_stop():
                    self.close()  # it may be mid-utterance: a new one starts next time
                    raise SynthesisFailed(f"{self.voice.id}: stopped")
                if time.monotonic() > deadline:
                    self.close()
                    raise SynthesisFailed(f"{self.voice.id} took longer than {SYNTH_TIMEOUT:g} s")
                try:
                    message = self.lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if message is None:
                    self.close()
                    raise SynthesisFailed(f"{self.voice.id} exited: {' | '.join(tail[-3:])[:300]}")
                wrote = re.search(r"Wrote (.+\.wav)$", message)
                if wrote is None:
                    tail.append(message)
                    continue
                shutil.move(wrote.group(1), out)
                return

    def close(self) -> None:
        if self.owner == os.getpid() and self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self.owner == os.getpid() and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        shutil.rmtree(self.folder, ignore_errors=True)


_children: dict[str, _PiperChild] = {}
_children_lock = threading.Lock()


def _piper_child(voice: Voice) -> _PiperChild:
    """This process's child for ``voice``: started on first use, again if it
    died (or was inherited over a fork from another process)."""
    with _children_lock:
        child = _children.get(voice.id)
        if child is None or child.owner != os.getpid() or not child.alive():
            if child is not None and child.owner == os.getpid():
                child.close()
            child = _children[voice.id] = _PiperChild(voice)
            log.info("piper: started %s (pid %d)", voice.id, child.pid)
        return child


def piper_pid(voice_id: str) -> int | None:
    """The pid of this process's running child for ``voice_id``, if any."""
    child = _children.get(voice_id)
    return child.pid if child is not None and child.alive() else None


def close_voices() -> None:
    """Kill this process's engine children (on worker shutdown; also at exit)."""
    with _children_lock:
        for child in list(_children.values()):
            child.close()
        _children.clear()


atexit.register(close_voices)


def voice_records() -> list[dict[str, Any]]:
    """This host's voices as the worker registry keeps them."""
    return [
        {"id": v.id, "engine": v.engine, "name": v.name, "language": v.language}
        for v in available_voices()
    ]
