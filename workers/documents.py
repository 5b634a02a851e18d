"""Document decks: a PDF or PPTX asset rendered one slide per page.

Untrusted bytes are never parsed in the worker's own process. A PDF is read
and rendered by a child (:mod:`workers.docchild`) under an address-space
limit (``SLIDEFARM_DOCUMENT_MEMORY_MB``), a CPU limit and a wall-clock limit
per page (``SLIDEFARM_PAGE_TIMEOUT``), one page at a time: a pdfium crash or
blow-up fails the job, never the Celery worker. A PPTX is converted to PDF by
LibreOffice headless, each conversion with its own fresh profile, no network
(a new network namespace where the host allows one), stdin closed, its
output file size bounded, and its whole process group killed after
``SLIDEFARM_CONVERT_TIMEOUT``; its titles and speaker notes are read with
python-pptx in the same kind of child. See docs/design.md, "Document decks".
"""

from __future__ import annotations

import functools
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Settings
from core.deck import MAX_SLIDES, Deck, Slide
from core.sniff import AssetRefused, sniff

log = logging.getLogger("slidefarm.documents")

#: The error of a PPTX job on a render host without LibreOffice.
LIBREOFFICE_MISSING = "pptx needs LibreOffice on the render host"
#: The per-slide manifest of a document deck (page, title, notes, duration).
MANIFEST_FILE = "slides.json"
#: Largest PDF LibreOffice may write (its process cannot write a bigger file).
MAX_CONVERTED_BYTES = 512 * 1024 * 1024
#: Largest JSON line a child may answer (a manifest of 200 slides' notes fits).
MAX_ANSWER = 8 * 1024 * 1024


class DocumentError(Exception):
    """The document cannot be rendered (retrying would not help)."""


class DocumentStopped(Exception):
    """The caller asked to stop (``should_stop``): the child was killed."""


#: Asked between short waits; true means stop now (a cancel, a lost lease, a timeout).
StopCheck = Callable[[], bool]
#: How often a wait on a child process asks whether to stop, in seconds.
POLL = 0.2


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Document:
    """An opened document: the PDF to render and, per page, its title and notes."""

    kind: str
    pdf: Path
    pages: int
    titles: list[str]
    notes: list[str]


def check_pages(deck: Deck, pages: int, settings: Settings) -> None:
    """:class:`DocumentError` unless a document of ``pages`` pages fits the
    limits: at least one page, at most ``MAX_SLIDES``, no more overrides than
    pages, and a video within ``SLIDEFARM_MAX_VIDEO_SECONDS``."""
    if pages < 1:
        raise DocumentError("the document has no pages")
    if pages > MAX_SLIDES:
        raise DocumentError(
            f"the document has {pages} pages, more than the {MAX_SLIDES} a deck may have"
        )
    if len(deck.slides) > pages:
        raise DocumentError(
            f"the deck sets {len(deck.slides)} slides but the document has only {pages} pages"
        )
    seconds = deck.seconds_for(pages)
    if seconds > settings.max_video_seconds:
        raise DocumentError(
            f"the video would last {seconds:g} s ({pages} pages), more than the "
            f"{settings.max_video_seconds:g} s allowed (SLIDEFARM_MAX_VIDEO_SECONDS)"
        )


def expand(deck: Deck, document: Document) -> list[Slide]:
    """One slide per page: the page's own title and notes unless the deck's
    override for that page sets them; its duration, transition, narration
    and audio if set (with ``options.narrate`` the notes are spoken)."""
    slides = []
    for i in range(document.pages):
        given = deck.slides[i] if i < len(deck.slides) else None
        title = given.title if given is not None and given.title.strip() else document.titles[i]
        notes = given.notes if given is not None and given.notes.strip() else document.notes[i]
        slides.append(
            Slide(
                title=title,
                notes=notes,
                duration=given.duration if given is not None else None,
                transition=given.transition if given is not None else None,
                narration=given.narration if given is not None else "",
                audio=given.audio if given is not None else None,
            )
        )
    return slides


def manifest(document: Document, slides: list[Slide]) -> bytes:
    """``slides.json``: per slide its page, title, notes, duration and transition."""
    body = {
        "kind": document.kind,
        "pages": document.pages,
        "slides": [
            {
                "page": n,
                "title": s.title,
                "notes": s.notes,
                "duration": s.seconds,
                "transition": s.transition,
            }
            for n, s in enumerate(slides, 1)
        ],
    }
    return json.dumps(body, ensure_ascii=False, indent=1).encode()


# -- the child process --------------------------------------------------------


class _Child:
    """One run of :mod:`workers.docchild`: JSON answers read with a time limit
    per answer; killed (its whole process group) when left early."""

    def __init__(
        self, args: list[str], settings: Settings, errors: Path, should_stop: StopCheck = _never
    ) -> None:
        self.timeout = settings.page_timeout
        self.should_stop = should_stop
        self.errors = errors
        cmd = [
            sys.executable,
            "-m",
            "workers.docchild",
            "--memory-mb",
            str(settings.document_memory_mb),
            "--cpu-seconds",
            str(max(int(settings.page_timeout * (MAX_SLIDES + 1)), 1)),
            *args,
        ]
        with errors.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                env=_child_env(),
            )
        #: The child's peak resident memory, once it has said so.
        self.peak_kib: int | None = None

    def answers(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    answer = json.loads(line)
                    if "error" in answer:
                        raise DocumentError(str(answer["error"]))
                    if "peak_kib" in answer:
                        self.peak_kib = int(answer["peak_kib"])
                    yield answer
                deadline = time.monotonic() + self.timeout
                while not selector.select(min(POLL, max(deadline - time.monotonic(), 0))):
                    if self.should_stop():
                        self.kill()
                        raise DocumentStopped()
                    if time.monotonic() >= deadline:
                        self.kill()
                        raise DocumentError(
                            f"reading the document took longer than {self.timeout:g} s "
                            "for one page (SLIDEFARM_PAGE_TIMEOUT)"
                        )
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buffer += chunk
                if len(buffer) > MAX_ANSWER:
                    self.kill()
                    raise DocumentError("the document reader answered too much")
        self._reap()

    def _reap(self) -> None:
        _, status = os.waitpid(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        code = self.proc.returncode
        if code != 0:
            tail = self.errors.read_bytes()[-400:].decode(errors="replace").strip()
            if "MemoryError" in tail or code == -signal.SIGKILL:
                why = "ran out of the memory a document may use (SLIDEFARM_DOCUMENT_MEMORY_MB)"
            elif code < 0:
                why = f"crashed ({signal.Signals(-code).name})"
            else:
                why = f"failed (exit status {code}): {tail.splitlines()[-1] if tail else ''}"
            raise DocumentError(f"reading the document {why}")

    def kill(self) -> None:
        if self.proc.returncode is None:
            _kill_group(self.proc)

    def close(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


#: What the reader child inherits of the worker's environment: no settings,
#: no database URL, no secrets; it has nothing to reach.
_CHILD_ENV = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "TMPDIR")


def _child_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _CHILD_ENV if k in os.environ}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except (subprocess.TimeoutExpired, ChildProcessError):
        pass


def _ask(
    args: list[str], settings: Settings, workdir: Path, should_stop: StopCheck
) -> dict[str, Any]:
    """The one answer of a child command."""
    child = _Child(args, settings, workdir / "child.err", should_stop)
    try:
        answers = list(child.answers())
    finally:
        child.close()
    if len(answers) != 1:
        raise DocumentError("the document reader gave no answer")
    return answers[0]


# -- LibreOffice --------------------------------------------------------------


def find_soffice(settings: Settings) -> str:
    """The LibreOffice binary (``SLIDEFARM_SOFFICE`` or ``soffice`` on PATH);
    :class:`DocumentError` ``LIBREOFFICE_MISSING`` without one."""
    if settings.soffice:
        path = Path(settings.soffice)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        found = shutil.which(settings.soffice) if "/" not in settings.soffice else None
    else:
        found = shutil.which("soffice") or shutil.which("libreoffice")
    if found is None:
        raise DocumentError(LIBREOFFICE_MISSING)
    return found


@functools.cache
def no_network_prefix() -> tuple[str, ...]:
    """The command prefix that runs a program in a new, empty network
    namespace (only a loopback that is down): ``unshare -n`` as root,
    ``unshare -rn`` (a user namespace) otherwise; empty where neither works."""
    unshare = shutil.which("unshare")
    if unshare is None:
        log.warning("no unshare: LibreOffice conversions run without a network sandbox")
        return ()
    candidates = [[unshare, "-n"], [unshare, "-rn"]] if os.geteuid() == 0 else [[unshare, "-rn"]]
    for prefix in candidates:
        try:
            probe = subprocess.run(
                [*prefix, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return tuple(prefix)
    log.warning("no network namespace allowed: LibreOffice conversions keep the host's network")
    return ()


def _limits_prefix(settings: Settings) -> tuple[str, ...]:
    """``prlimit`` bounding the converter's address space (as the reader's),
    output file size and core dumps."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        log.warning("no prlimit: LibreOffice conversions are bounded by time only")
        return ()
    memory = settings.document_memory_mb * 1024 * 1024
    return (prlimit, f"--as={memory}", f"--fsize={MAX_CONVERTED_BYTES}", "--core=0", "--")


def convert_pptx(
    path: Path, workdir: Path, settings: Settings, should_stop: StopCheck = _never
) -> Path:
    """The PDF LibreOffice makes of the PPTX at ``path``, in ``workdir``."""
    soffice = find_soffice(settings)
    workdir = workdir.resolve()
    source = workdir / "deck.pptx"
    shutil.copyfile(path, source)
    out = workdir / "pdf"
    profile = workdir / "profile"  # this conversion's own: never shared
    home = workdir / "home"
    for folder in (out, profile, home):
        folder.mkdir()
    cmd = [
        *no_network_prefix(),
        *_limits_prefix(settings),
        soffice,
        f"-env:UserInstallation={profile.as_uri()}",
        "--headless",
        "--invisible",
        "--norestore",
        "--nolockcheck",
        "--nodefault",
        "--nologo",
        "--convert-to",
        "pdf",
        "--outdir",
        str(out),
        str(source),
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "SAL_USE_VCLPLUGIN": "svp",
        # Nothing reaches a proxy, even where no network namespace is allowed.
        "no_proxy": "*",
        "NO_PROXY": "*",
    }
    started = time.monotonic()
    with (workdir / "soffice.log").open("wb") as output:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
        deadline = started + settings.convert_timeout
        try:
            while True:
                try:
                    proc.wait(timeout=min(POLL, max(deadline - time.monotonic(), 0.001)))
                    break
                except subprocess.TimeoutExpired:
                    if should_stop():
                        raise DocumentStopped() from None
                    if time.monotonic() >= deadline:
                        raise DocumentError(
                            f"converting the PPTX took longer than {settings.convert_timeout:g} s "
                            "(SLIDEFARM_CONVERT_TIMEOUT)"
                        ) from None
        finally:
            _kill_group(proc)  # on a stop or timeout, and whatever it left running
    pdf = out / "deck.pdf"
    log.info(
        "converted a PPTX in %.2fs (exit %s, %s)",
        time.monotonic() - started,
        proc.returncode,
        " ".join(no_network_prefix()) or "no network namespace",
    )
    if proc.returncode != 0 or not pdf.is_file() or pdf.stat().st_size == 0:
        said = (workdir / "soffice.log").read_bytes()[-300:].decode(errors="replace").strip()
        raise DocumentError(
            f"LibreOffice could not convert the PPTX (exit status {proc.returncode})"
            + (f": {said}" if said else "")
        )
    return pdf


# -- opening and rendering ----------------------------------------------------


def open_document(
    kind: str,
    path: Path,
    workdir: Path,
    settings: Settings,
    check: Callable[[int], None],
    should_stop: StopCheck = _never,
) -> Document:
    """Read the document at ``path`` (``kind`` pdf or pptx): its page count is
    passed to ``check`` (which raises to refuse it) before any page is
    rendered or any PPTX converted."""
    if kind == "pdf":
        info = _ask(["inspect", str(path)], settings, workdir, should_stop)
        pages = int(info["pages"])
        check(pages)
        titles = [str(t) for t in info["titles"]]
        return Document("pdf", path, pages, titles, [""] * pages)
    if kind != "pptx":
        raise DocumentError(f"a {kind.upper()} is not a document")
    find_soffice(settings)  # fail at once on a host without LibreOffice
    try:
        with path.open("rb") as stream:  # the zip-bomb bound, again, before any parsing
            sniff(stream, max_pixels=settings.max_asset_pixels)
    except AssetRefused as refused:
        raise DocumentError(f"the PPTX is refused: {refused}") from refused
    texts = _ask(["pptx-text", str(path)], settings, workdir, should_stop)["slides"]
    check(len(texts))
    pdf = convert_pptx(path, workdir, settings, should_stop)
    info = _ask(["inspect", str(pdf)], settings, workdir, should_stop)
    pages = int(info["pages"])
    check(pages)
    if pages != len(texts):
        log.warning("the PPTX has %d visible slides but its PDF %d pages", len(texts), pages)
    texts = (list(texts) + [["", ""]] * pages)[:pages]
    return Document("pptx", pdf, pages, [t for t, _ in texts], [n for _, n in texts])


def render_pages(
    document: Document,
    size: tuple[int, int],
    background: tuple[int, int, int],
    pattern: str,
    settings: Settings,
    workdir: Path,
    should_stop: StopCheck = _never,
) -> Generator[tuple[int, Path], None, None]:
    """Render every page, one at a time in a child process, to
    ``pattern.format(n)`` (n from 1); yield ``(n, path)`` as each is written.
    Leaving early kills the child."""
    width, height = size
    args = ["render", str(document.pdf), pattern, str(width), str(height)]
    colours = [str(c) for c in background]
    child = _Child([*args, *colours], settings, workdir / "render.err", should_stop)
    started = time.monotonic()
    try:
        for answer in child.answers():
            if "page" in answer:
                n = int(answer["page"])
                yield n, Path(pattern.format(n))
    finally:
        child.close()
    log.info(
        "rendered %d pages in %.2fs (%.3fs a page), reader peak memory %s KiB",
        document.pages,
        time.monotonic() - started,
        (time.monotonic() - started) / max(document.pages, 1),
        child.peak_kib,
    )
