"""Request bodies the WSGI server cannot deliver are the client's fault: 400.

gunicorn de-chunks a ``Transfer-Encoding: chunked`` body while the view reads
``wsgi.input``; a bad chunk size, a missing chunk terminator or a body cut
short raises its own parse errors (plain exceptions, or ``IOError``) from that
read, which would surface as a 500. :func:`guard_request_body` wraps the
input stream so that any such failure becomes a ``400 malformed_body`` in the
API's error shape, whichever view (a submission, the dashboard's sign-in
form) was reading, and whichever server raised it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, HTTPException

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)


class MalformedBody(BadRequest):
    """The request body could not be read (bad chunked encoding, or cut short)."""

    code = 400
    name = "Malformed Body"  # the error code the API answers with: malformed_body
    description = (
        "the request body could not be read: its chunked encoding is malformed or it ended early"
    )


class GuardedInput:
    """``wsgi.input`` whose read errors are a 400, never a 500."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def _guard(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except HTTPException:
            raise  # already an answer (e.g. Werkzeug's ClientDisconnected)
        except Exception as error:  # gunicorn's InvalidChunkSize, NoMoreData, ...
            log.info(
                "refused a request body that could not be read: %s: %s", type(error).__name__, error
            )
            raise MalformedBody() from error

    def read(self, *args: Any) -> bytes:
        data: bytes = self._guard(self._stream.read, *args)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._guard(self._stream.readline, *args)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._guard(self._stream.readlines, *args)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


def guard_request_body(app: WSGIApplication) -> WSGIApplication:
    """``app`` with its ``wsgi.input`` wrapped in :class:`GuardedInput`."""

    def wrapped(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ.get("wsgi.input")
        if stream is not None:
            environ["wsgi.input"] = GuardedInput(stream)
        return app(environ, start_response)

    return wrapped
