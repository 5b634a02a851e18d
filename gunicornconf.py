"""gunicorn's settings for slidefarm's API, and the hooks that drain it:
``gunicorn -c python:gunicornconf 'api:create_app()'`` (command-line options
override what is set here).

A stop (SIGTERM to the master) drains: the master marks, in memory every
worker shares, that the instance is stopping, and each worker's ``/readyz``
answers 503 at once while it goes on serving for ``SLIDEFARM_API_DRAIN_DELAY``
seconds, long enough for the load balancer's health check to take it out.
Only then does the worker stop accepting: its event streams end with a
``reconnect`` event, in-flight requests finish (within ``graceful_timeout``
of the master's SIGTERM) and it exits. A HUP reload replaces the workers
with no delay (the listening socket stays open, so the new workers take the
next connections); the old ones end their streams and finish their requests
in the same way.

The master imports this module and forks every worker from itself, so it
imports the standard library only: a worker started by a HUP reload then
imports slidefarm's code afresh, the new version's.
"""

from __future__ import annotations

import mmap
import signal
import threading
from typing import Any

wsgi_app = "api:create_app()"
worker_class = "gthread"
workers = 4
threads = 4
#: From the master's SIGTERM to its SIGKILL of a worker still running: more
#: than SLIDEFARM_API_DRAIN_DELAY plus the longest request.
graceful_timeout = 30
#: Longer than a load balancer keeps an idle connection to us, so that it,
#: never gunicorn, closes an idle one (no request sent on a closing socket).
keepalive = 75
#: gunicorn 27's control socket has one default path per user: two
#: instances on one host would share it. Signals are the controls we use.
control_socket_disable = True

#: One byte shared by the master and every worker it forks: 1 once the
#: master is asked to stop.
_STOPPING = mmap.mmap(-1, 1)


def _instance_stopping() -> bool:
    return _STOPPING[0] == 1


def when_ready(server: Any) -> None:
    """In the master: a SIGTERM first marks the instance stopping, then goes
    to gunicorn's own handler (a graceful stop of the workers)."""
    forward = signal.getsignal(signal.SIGTERM)

    def on_term(sig: int, frame: Any) -> None:
        _STOPPING[0] = 1
        if callable(forward):
            forward(sig, frame)

    signal.signal(signal.SIGTERM, on_term)


def post_worker_init(worker: Any) -> None:
    """In each worker, its app loaded: its ``/readyz`` follows the master's
    mark, and its SIGTERM waits the drain delay when the instance stops."""
    from api.drain import drain_of  # the worker's own import, never the master's
    from core.config import get_settings

    drain = drain_of(worker.wsgi)
    drain.watch_instance(_instance_stopping)
    delay = get_settings().api_drain_delay
    if delay >= worker.cfg.graceful_timeout:
        worker.log.warning(
            "SLIDEFARM_API_DRAIN_DELAY (%s s) is not less than graceful_timeout (%s s): "
            "requests still running when the master gives up are cut",
            delay,
            worker.cfg.graceful_timeout,
        )
    stop = worker.handle_exit

    def stop_accepting(sig: int, frame: Any) -> None:
        drain.end_streams()
        stop(sig, frame)

    def on_term(sig: int, frame: Any) -> None:
        drain.begin()
        if _instance_stopping() and delay > 0:
            timer = threading.Timer(delay, stop_accepting, (sig, frame))
            timer.daemon = True
            timer.start()
        else:
            stop_accepting(sig, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn has it: requests go on
