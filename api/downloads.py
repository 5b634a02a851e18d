"""The name a downloaded output is saved under: made from the deck's title.

A title is the client's text, so it is made safe before it reaches a
``Content-Disposition`` header (RFC 6266): control and format characters
(newlines, a right-to-left override that would show ``gpj.exe`` as
``exe.jpg``) and path separators are dropped, characters that file systems
refuse become ``_``, whitespace is collapsed, leading and trailing dots go,
and the length is bounded. The header carries an ASCII ``filename`` for old
clients and the full name in ``filename*`` (RFC 5987, UTF-8); whatever is
left empty falls back to the job id.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

MAX_NAME = 100
#: Refused in file names by common file systems (Windows above all).
_RESERVED = re.compile(r'[<>:"|?*]')
#: Left out of the ASCII fallback: '%' (some clients decode it), '\' and '"'
#: (quoting), ';' and ',' (header parsers that split on them).
_ASCII_UNSAFE = re.compile(r'[^ -~]|[%\\";,]')


def safe_filename(title: str) -> str:
    """``title`` made into a file name (no extension); ``""`` if nothing is left."""
    name = unicodedata.normalize("NFC", title)
    name = "".join(" " if ch in "/\\" or unicodedata.category(ch)[0] == "C" else ch for ch in name)
    name = _RESERVED.sub("_", name)
    name = " ".join(name.split())[:MAX_NAME]
    return name.strip(" .")


def _ascii_fallback(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    # Folding brings back what safe_filename removed: a fullwidth solidus
    # becomes '/', a fullwidth colon ':'. So the folded name is made safe again.
    folded = safe_filename(folded)
    folded = " ".join(_ASCII_UNSAFE.sub("_", folded).split()).strip(" .")
    return folded if folded.strip("_ ") else ""


def attachment(title: str, suffix: str, fallback: str) -> str:
    """``Content-Disposition`` for saving ``title`` + ``suffix`` (e.g. ``.mp4``),
    ``fallback`` (the job id) + ``suffix`` when the title leaves no name."""
    name = safe_filename(title) or fallback
    plain = _ascii_fallback(name) or fallback
    return (
        f'attachment; filename="{plain}{suffix}"; '
        f"filename*=UTF-8''{quote(name + suffix, safe='')}"
    )
