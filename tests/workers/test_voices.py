"""The voices a worker speaks with, for real: espeak-ng (Debian) and Piper
(the piper extra, a separate GPL process kept per worker process and voice),
their ids and languages, speech that is not silence, the Piper child loaded
once and restarted when it dies, and a clear failure without an engine."""

from __future__ import annotations

import array
import os
import shutil
import signal
import time
import wave
from pathlib import Path

import pytest

from workers import voices
from workers.voices import SynthesisFailed, VoiceUnavailable

JOE = "piper:en_US-joe-medium"
TEXT = "Welcome to the quarterly review. Revenue grew by twelve percent."


def _need_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        from tests.support.services import missing

        missing("espeak-ng is not installed (make espeak)")


def _need_piper() -> None:
    if JOE not in {v.id for v in voices.available_voices()}:
        from tests.support.services import missing

        missing("Piper and its joe voice are not installed (pip install -e '.[test]')")


def _peak_and_seconds(path: Path) -> tuple[int, float]:
    with wave.open(str(path), "rb") as audio:
        assert audio.getnchannels() == 1 and audio.getsampwidth() == 2
        samples = array.array("h", audio.readframes(audio.getnframes()))
        return max(abs(s) for s in samples), audio.getnframes() / audio.getframerate()


def test_espeak_voices_are_listed_by_language() -> None:
    _need_espeak()
    listed = {v.id: v for v in voices.available_voices()}
    assert listed["espeak-ng:en"].engine == "espeak-ng"
    assert listed["espeak-ng:fr"].language == "fr"
    assert voices.default_voice() == "espeak-ng:en"


def test_piper_voices_come_from_installed_voice_packages() -> None:
    _need_piper()
    joe = {v.id: v for v in voices.available_voices()}[JOE]
    assert (joe.engine, joe.name, joe.language) == ("piper", "en_US-joe-medium", "en-us")
    assert joe.engine_voice.endswith("en_US-joe-medium.onnx") and Path(joe.engine_voice).is_file()
    assert {"id": JOE, "engine": "piper", "name": "en_US-joe-medium", "language": "en-us"} in (
        voices.voice_records()
    )


@pytest.mark.parametrize("voice", ["espeak-ng:en", JOE])
def test_synthesis_is_speech_of_a_plausible_length(voice: str, tmp_path: Path) -> None:
    (_need_piper if voice == JOE else _need_espeak)()
    out = tmp_path / "speech.wav"
    seconds = voices.synthesize(voice, TEXT, out)
    peak, length = _peak_and_seconds(out)
    assert seconds == pytest.approx(length)
    # Eleven words: two to eight seconds of speech, and not silence.
    assert 2.0 < length < 8.0 and peak > 3000


def test_the_piper_model_is_loaded_once_per_process(tmp_path: Path) -> None:
    _need_piper()
    voices.synthesize(JOE, "One.", tmp_path / "one.wav")
    pid = voices.piper_pid(JOE)
    assert pid is not None
    started = time.monotonic()
    voices.synthesize(JOE, "Two,\nacross lines.", tmp_path / "two.wav")
    assert voices.piper_pid(JOE) == pid
    # No model load (about a second) the second time.
    assert time.monotonic() - started < 1.0
    assert _peak_and_seconds(tmp_path / "two.wav")[0] > 3000


def test_the_piper_child_gets_no_settings_or_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need_piper()
    voices.close_voices()
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:secret@db/slidefarm")
    monkeypatch.setenv("SLIDEFARM_SECRET_KEY", "x" * 40)
    voices.synthesize(JOE, "Hello.", tmp_path / "hello.wav")
    environ = Path(f"/proc/{voices.piper_pid(JOE)}/environ").read_bytes()
    assert b"secret" not in environ and b"SLIDEFARM_" not in environ
    voices.close_voices()


def test_a_killed_piper_child_is_started_again(tmp_path: Path) -> None:
    _need_piper()
    voices.synthesize(JOE, "Before.", tmp_path / "before.wav")
    pid = voices.piper_pid(JOE)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while voices.piper_pid(JOE) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    seconds = voices.synthesize(JOE, "After the crash.", tmp_path / "after.wav")
    assert seconds > 0.3 and voices.piper_pid(JOE) not in (None, pid)


def test_closing_kills_the_children(tmp_path: Path) -> None:
    _need_piper()
    voices.synthesize(JOE, "Hello.", tmp_path / "hello.wav")
    pid = voices.piper_pid(JOE)
    assert pid is not None
    voices.close_voices()
    assert voices.piper_pid(JOE) is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_stop_request_interrupts_piper(tmp_path: Path) -> None:
    _need_piper()
    with pytest.raises(SynthesisFailed, match="stopped"):
        voices.synthesize(JOE, TEXT * 20, tmp_path / "long.wav", should_stop=lambda: True)
    assert voices.synthesize(JOE, "Still here.", tmp_path / "again.wav") > 0.3


@pytest.mark.parametrize("voice", ["espeak-ng:en", JOE])
def test_nothing_to_pronounce_is_a_moment_of_silence(voice: str, tmp_path: Path) -> None:
    (_need_piper if voice == JOE else _need_espeak)()
    pid = voices.piper_pid(JOE)
    for text in ("...", " — ", "🙂"):
        seconds = voices.synthesize(voice, text, tmp_path / "quiet.wav")
        assert seconds == pytest.approx(voices.SILENT_SECONDS, abs=1e-3)
        assert _peak_and_seconds(tmp_path / "quiet.wav") == (0, seconds)
    assert voices.piper_pid(JOE) == pid  # no child crashed on it


def test_an_unknown_voice_is_unavailable(tmp_path: Path) -> None:
    _need_espeak()
    with pytest.raises(VoiceUnavailable, match="no voice 'piper:nobody'"):
        voices.synthesize("piper:nobody", "Hi.", tmp_path / "x.wav")


def test_a_host_without_any_engine_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voices, "available_voices", lambda: ())
    with pytest.raises(VoiceUnavailable, match="speech needs espeak-ng or Piper"):
        voices.synthesize("espeak-ng:en", "Hi.", tmp_path / "x.wav")
    assert voices.default_voice() is None
