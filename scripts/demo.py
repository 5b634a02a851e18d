"""Render the sample deck end to end on the embedded default.

Starts the API (gunicorn) and a real Celery worker on SQLite and kombu's
filesystem broker, submits ``examples/sample-deck.json`` over HTTP, shows the
job's progress, prints where the video is, then stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FINAL = {"completed", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_ready(base: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a process exited early (code {p.returncode}); see the logs")
        try:
            status, _ = http("GET", f"{base}/readyz")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the API did not become ready in time")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def bar(progress: float, width: int = 30) -> str:
    filled = round(progress * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {progress * 100:5.1f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("deck", nargs="?", default=str(ROOT / "examples" / "sample-deck.json"))
    args = parser.parse_args()

    os.chdir(ROOT)
    logs = ROOT / ".slidefarm"
    logs.mkdir(exist_ok=True)
    py = sys.executable
    print("slidefarm demo: SQLite + filesystem broker (no servers needed)")
    subprocess.run(
        [py, "-m", "alembic", "upgrade", "head"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (
            open(logs / "demo-api.log", "wb") as api_log,
            open(logs / "demo-worker.log", "wb") as worker_log,
        ):
            procs.append(
                subprocess.Popen(
                    [
                        py,
                        "-m",
                        "gunicorn",
                        "-w",
                        "2",
                        "-b",
                        f"127.0.0.1:{port}",
                        "api:create_app()",
                    ],
                    stdout=api_log,
                    stderr=subprocess.STDOUT,
                )
            )
            procs.append(
                subprocess.Popen(
                    [
                        py,
                        "-m",
                        "celery",
                        "-A",
                        "workers",
                        "worker",
                        "-n",
                        "demo@%h",
                        "--concurrency",
                        "2",
                        "--loglevel",
                        "INFO",
                    ],
                    stdout=worker_log,
                    stderr=subprocess.STDOUT,
                )
            )
            wait_ready(base, procs)
            print(f"API on {base}, worker started (logs in .slidefarm/)")

            status, job = http("POST", f"{base}/v1/jobs", Path(args.deck).read_bytes())
            if status != 202:
                print(f"submission refused ({status}): {json.dumps(job)}", file=sys.stderr)
                return 1
            job_id = job["job_id"]
            print(f"submitted {job['title']!r}: job {job_id}")
            started = time.monotonic()
            live = sys.stdout.isatty()
            shown = ""
            while True:
                line = f"  {job['status']:<10} {job['stage']:<17} {bar(job['progress'])}"
                if line != shown:
                    print(("\r" + line) if live else line, end="" if live else "\n", flush=True)
                    shown = line
                if job["status"] in FINAL:
                    break
                if time.monotonic() - started > 300:
                    print("\ngave up waiting after 300 s", file=sys.stderr)
                    return 1
                time.sleep(0.25)
                _, job = http("GET", f"{base}/v1/jobs/{job_id}")
            if live:
                print()
            elapsed = time.monotonic() - started
            if job["status"] != "completed":
                print(f"job {job['status']}: {job['error']}", file=sys.stderr)
                return 1
            output = Path(os.environ.get("SLIDEFARM_OUTPUT_DIR", "output")).resolve() / job_id
            print(
                f"rendered {len(job['created_files'])} files in {elapsed:.1f} s by {job['worker']}"
            )
            print(f"video:     {output / 'video.mp4'}")
            print(f"thumbnail: {output / 'thumbnail.jpg'}")
            print(f"slides:    {output / job['slide_image_path']}/")
            print(f"over HTTP: {base}{job['video_url']} (while the API runs)")
            return 0
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
