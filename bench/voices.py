"""Speech measured: ``python -m bench.voices`` (no servers needed).

For each voice (espeak-ng en, Piper joe when installed), speaks the same
sentences with the process pinned to one core and prints the real-time
factor, RTF = synthesis seconds / audio seconds (below 1: faster than it
plays). Piper's first utterance (its model load) is timed apart.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from workers import voices

SENTENCES = [
    "Welcome to the quarterly review of the platform team.",
    "Revenue grew by twelve percent, and churn fell for the third quarter in a row.",
    "Next, we look at the roadmap: faster rendering, narration and background music.",
    "Thank you for listening; questions are welcome at the end of the session.",
]
VOICES = ["espeak-ng:en", "piper:en_US-joe-medium"]


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # children inherit it
    offered = {v.id for v in voices.available_voices()}
    with tempfile.TemporaryDirectory() as folder:
        for voice in VOICES:
            if voice not in offered:
                print(f"{voice:<26} not installed")
                continue
            started = time.perf_counter()
            voices.synthesize(voice, "Warming up.", Path(folder) / "warm.wav")
            warm = time.perf_counter() - started
            spent = spoken = 0.0
            for rounds in range(3):
                for n, text in enumerate(SENTENCES):
                    started = time.perf_counter()
                    spoken += voices.synthesize(voice, text, Path(folder) / f"{rounds}-{n}.wav")
                    spent += time.perf_counter() - started
            print(
                f"{voice:<26} RTF {spent / spoken:.3f}  ({spent:.2f} s for {spoken:.1f} s "
                f"of speech; first utterance {warm:.2f} s)"
            )
    voices.close_voices()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
