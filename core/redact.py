"""Secrets out of logs and error messages.

:func:`redact_secrets` masks what must never be written down: API keys
(``sf_<id>_<secret>``: the id stays, the secret goes), webhook signing
secrets (``whsec_...``), ``Bearer`` tokens and ``Authorization`` header
values, the signatures of signed output links (``?token=``), passwords in
URLs (``scheme://user:password@host`` becomes ``scheme://user:***@host``)
and ``password=...`` pairs of libpq-style connection strings.
:func:`install_log_redaction` makes every log record of the process pass
through it (the API's ``create_app`` and the worker's start-up call it), and
the job store applies it to the error texts it records and the messages of
its exceptions.

Part of ``core`` so that the API, the workers and the store share it; like
the rest of ``core`` it imports nothing else of slidefarm.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"

_API_KEY = re.compile(r"\b(sf_[A-Za-z0-9]+_)[A-Za-z0-9]+")
# Webhook signing secrets (``whsec_`` and the secret).
_WEBHOOK_SECRET = re.compile(r"\b(whsec_)[A-Za-z0-9]+")
# Capitalised as clients send it (prose's "bearer" is left alone; a header
# in any case is caught by _AUTH_HEADER).
_BEARER = re.compile(r"\b(Bearer|BEARER)(\s+)[A-Za-z0-9._~+/=-]+")
# Any scheme's credentials in an Authorization header (``Basic ...`` too).
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)(?:[A-Za-z]+\s+)?[^\s,;'\"]+"
)
# user (possibly empty) ':' password '@': the password runs to the last '@'
# before the path, so one that itself holds an unescaped '@' is masked whole.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/?#@]*):[^\s/]+@")
# A signed output link's token, ``<expires>.<key id>.<signature>``: the
# signature opens a file without a key, and access logs write the URL that
# carries it. Which link, and whose, stays readable.
_SIGNED_LINK = re.compile(r"\b(\d{1,12}\.[A-Za-z0-9]{1,40}\.)[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)('[^']*'|\"[^\"]*\"|\S+)")


_PATTERNS = (
    _API_KEY,
    _WEBHOOK_SECRET,
    _BEARER,
    _AUTH_HEADER,
    _URL_PASSWORD,
    _SIGNED_LINK,
    _KEYWORD_PASSWORD,
)


def _scoped(pattern: re.Pattern[str]) -> str:
    # A leading (?i) applies to the whole expression; inside an alternation
    # it must be scoped to its own branch.
    source = pattern.pattern.removeprefix("(?i)")
    return f"(?i:{source})" if pattern.flags & re.IGNORECASE else f"(?:{source})"


#: Any of the patterns: one scan tells whether a text needs masking at all,
#: so a text without a credential (nearly every log line) costs one search,
#: not seven substitutions.
_ANY_SECRET = re.compile("|".join(_scoped(p) for p in _PATTERNS))


def redact_secrets(text: str) -> str:
    """``text`` with every credential it carries masked."""
    if not text or _ANY_SECRET.search(text) is None:
        return text
    text = _API_KEY.sub(rf"\1{MASK}", text)
    text = _WEBHOOK_SECRET.sub(rf"\1{MASK}", text)
    text = _BEARER.sub(rf"\1\2{MASK}", text)
    text = _AUTH_HEADER.sub(rf"\1{MASK}", text)
    text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _SIGNED_LINK.sub(rf"\1{MASK}", text)
    return _KEYWORD_PASSWORD.sub(rf"\1\2{MASK}", text)


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message (arguments merged
    in), its traceback and its stack with :func:`redact_secrets`. It never
    drops a record. Usable on any handler (``dictConfig``, gunicorn's
    ``logconfig_dict``); :func:`install_log_redaction` applies it to every
    record of the process."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite ``record`` in place so that no handler can print a secret it held."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it itself
        return record
    redacted = redact_secrets(message)
    if redacted != message or record.args:
        record.msg, record.args = redacted, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_secrets(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_secrets(record.stack_info)
    return record


_installed = False
_install_lock = threading.Lock()


def install_log_redaction() -> None:
    """Redact every log record this process creates, whichever logger or
    handler (gunicorn's, Celery's, pytest's) it goes to. Idempotent.

    A filter on a logger misses records its children propagate, and one on a
    handler misses handlers added later, so the record factory is wrapped:
    a record is redacted once, when it is made (only records a logger's level
    lets through are made at all).
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return redact_record(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        _installed = True
