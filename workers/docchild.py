"""The child process that reads untrusted documents (``python -m workers.docchild``).

A worker never opens a PDF or a PPTX in its own process: pdfium and lxml
run here, under an address-space limit, a CPU limit and a wall-clock limit
the parent enforces (:mod:`workers.documents`), so a crash or a blow-up fails
the job and the Celery worker lives on. It imports only the standard
library, Pillow, pypdfium2 and (for ``pptx-text``) python-pptx.

Commands, each answering JSON lines on stdout (``{"error": ...}`` on a
failure the user can act on, then exit status 2):

- ``inspect PDF``: ``{"pages": n, "titles": [...]}``: the page count and,
  per page, the first outline (bookmark) title pointing at it, or "";
- ``render PDF PATTERN WIDTH HEIGHT R G B``: each page in turn, rendered at
  the scale that fits the frame and centred on the ``R G B`` background,
  written to ``PATTERN.format(n)``: one ``{"page": n, "bytes": size}`` per
  page, then ``{"done": true, "peak_kib": ...}`` (its peak resident memory);
- ``pptx-text PPTX``: ``{"slides": [[title, notes], ...]}`` of the visible
  slides, in order.

Limits come as ``--memory-mb`` and ``--cpu-seconds`` before the command and
are applied to this process before any document is opened.
"""

from __future__ import annotations

import itertools
import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

#: Titles and notes are cut to what a slide may hold (core.deck.Slide).
MAX_TITLE = 200
MAX_NOTES = 10_000
#: Outline entries read at most (a hostile outline can be endless).
MAX_OUTLINE = 5_000
#: pdfium's document-loading error codes (FPDF_ERR_*).
_LOAD_ERRORS = {
    1: "the PDF cannot be read",
    2: "the PDF file cannot be opened",
    3: "the PDF is damaged or truncated (not a valid PDF)",
    4: "the PDF is encrypted (it needs a password)",
    5: "the PDF is encrypted with an unsupported security handler",
    6: "the PDF is damaged (a page is invalid)",
}


OUT_OF_MEMORY = (
    "the document needs more memory than a render may use (SLIDEFARM_DOCUMENT_MEMORY_MB)"
)


class Refused(Exception):
    """The document cannot be rendered; the message says why, for the user."""


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def clean(text: str, limit: int) -> str:
    """``text`` without NUL, PowerPoint's vertical-tab line breaks as newlines,
    trimmed and cut to ``limit`` characters."""
    return text.replace("\x00", "").replace("\x0b", "\n").strip()[:limit].strip()


def open_pdf(path: str) -> Any:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(path)
    except pdfium.PdfiumError as error:
        code = getattr(error, "err_code", None)
        if not code or (code == 4 and not _mentions(path, b"/Encrypt")):
            # pdfium refuses a page tree of no pages without an error code
            # (or with a stale one): it is not a password it lacks.
            raise Refused("the PDF has no pages (or its page tree is damaged)") from error
        raise Refused(_LOAD_ERRORS.get(code or 0, f"the PDF cannot be read: {error}")) from error


def _mentions(path: str, word: bytes) -> bool:
    """Whether the file at ``path`` holds ``word`` anywhere (read in chunks)."""
    tail = b""
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            if word in tail + chunk:
                return True
            tail = chunk[-len(word) :]
    return False


def outline_titles(pdf: Any, pages: int) -> list[str]:
    """Per page, the title of the first (shallowest) outline entry that points at it."""
    found: dict[int, tuple[int, str]] = {}
    try:
        for item in itertools.islice(pdf.get_toc(max_depth=4), MAX_OUTLINE):
            index = item.page_index
            title = clean(item.title or "", MAX_TITLE)
            if index is None or not 0 <= index < pages or not title:
                continue
            if index not in found or item.level < found[index][0]:
                found[index] = (item.level, title)
    except Exception:  # an outline is a nicety: a broken one is ignored
        pass
    return [found[i][1] if i in found else "" for i in range(pages)]


def inspect(path: str) -> None:
    pdf = open_pdf(path)
    pages = len(pdf)
    emit({"pages": pages, "titles": outline_titles(pdf, pages) if pages else []})


def render(path: str, pattern: str, width: int, height: int, background: tuple[int, ...]) -> None:
    import pypdfium2 as pdfium
    from PIL import Image

    pdf = open_pdf(path)
    for index in range(len(pdf)):
        n = index + 1
        try:
            page = pdf[index]
            page_w, page_h = page.get_size()
        except pdfium.PdfiumError as error:
            raise Refused(f"page {n} of the PDF is damaged: {error}") from error
        if not (math.isfinite(page_w) and math.isfinite(page_h)) or page_w < 1 or page_h < 1:
            raise Refused(f"page {n} of the PDF has no usable size ({page_w} x {page_h} pt)")
        # One PDF point is one pixel at scale 1: the scale that fits the
        # frame bounds the bitmap by the frame, whatever the MediaBox says.
        scale = min(width / page_w, height / page_h)
        try:
            # White fill: a page is paper, so transparent content sits on white.
            # No form environment is initialised: nothing interactive, no JavaScript.
            bitmap = page.render(scale=scale, fill_color=(255, 255, 255, 255))
            picture = bitmap.to_pil().convert("RGB")
        except pdfium.PdfiumError as error:
            raise Refused(f"page {n} of the PDF cannot be rendered: {error}") from error
        if picture.width > width or picture.height > height:  # rounding up by a pixel
            picture = picture.crop((0, 0, min(picture.width, width), min(picture.height, height)))
        frame = Image.new("RGB", (width, height), background[:3])
        frame.paste(picture, ((width - picture.width) // 2, (height - picture.height) // 2))
        target = Path(pattern.format(n))
        target.parent.mkdir(parents=True, exist_ok=True)
        frame.save(target, format="PNG", compress_level=3)
        del bitmap, picture, frame
        page.close()
        emit({"page": n, "bytes": target.stat().st_size})
    emit({"done": True, "peak_kib": peak_kib()})


def peak_kib() -> int:
    """This process's peak resident memory since its exec (``VmHWM``; the
    rusage figure would include the parent's size at fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def pptx_text(path: str) -> None:
    from pptx import Presentation

    try:
        deck = Presentation(path)
        slides: list[list[str]] = []
        for slide in deck.slides:
            if slide._element.get("show") in ("0", "false"):  # hidden: not exported
                continue
            shape = slide.shapes.title
            title = clean(shape.text_frame.text, MAX_TITLE) if shape is not None else ""
            notes = ""
            if slide.has_notes_slide:
                frame = slide.notes_slide.notes_text_frame
                notes = clean(frame.text, MAX_NOTES) if frame is not None else ""
            slides.append([title, notes])
    except Exception as error:
        raise Refused(f"the PPTX is damaged: {type(error).__name__}: {error}") from error
    emit({"slides": slides})


def main(argv: list[str]) -> int:
    args = list(argv)
    memory_mb = cpu = 0
    while args and args[0].startswith("--"):
        option, value = args.pop(0), int(args.pop(0))
        if option == "--memory-mb":
            memory_mb = value
        elif option == "--cpu-seconds":
            cpu = value
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    command, *rest = args
    try:
        if command == "inspect":
            inspect(rest[0])
        elif command == "render":
            path, pattern, w, h, r, g, b = rest
            render(path, pattern, int(w), int(h), (int(r), int(g), int(b)))
        elif command == "pptx-text":
            pptx_text(rest[0])
        else:
            raise SystemExit(f"unknown command {command!r}")
    except Refused as refused:
        emit({"error": str(refused)})
        return 2
    except MemoryError:
        emit({"error": OUT_OF_MEMORY})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
