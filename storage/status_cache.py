"""The status cache's copy in process memory, kept coherent by the
invalidations writers already publish on Redis pub/sub (storage/feed.py).

A status read of a job whose entry this process holds costs no network round
trip. One listener thread per process subscribes to every job's channel
(``PSUBSCRIBE slidefarm:job:*``: every committed change publishes there, from
any process and any version) and drops the entry of each job it hears about.

Staleness bound: an entry is served only while the listener has proved,
within the last ``bound`` seconds, that it hears everything: it sends a
``PING`` down its subscription every ``bound / 4`` seconds, and Redis answers
it on the same connection after every message published before it. So when
the answer to a ping sent at time S has arrived, every change published
before S has been dropped here, and entries are served only until
``S + bound``: a read returns a status at most ``bound`` seconds older than
the last change Redis published. When the subscription drops (or a pong is
late), nothing is served from memory: every entry is dropped, and serving
resumes only after the subscription is back and a ping has been answered.
An entry also lives no longer than its Redis entry would (the bound when a
writer could not reach Redis at all, ``SLIDEFARM_CACHE_TTL``).

Fills cannot resurrect a status a change replaced: a reader takes a ticket
(:meth:`LocalStatusCache.begin`) before it reads Redis or the database, and
its :meth:`~LocalStatusCache.put` is refused if the job was dropped in
between (the ticket went with it), as the Redis cache's compare-and-set does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

#: Most jobs one process keeps; the oldest entry goes first past it.
MAX_ENTRIES = 10_000
#: Seconds between two tries to subscribe again after the subscription failed.
RESUBSCRIBE_DELAY = 0.5


class Ticket:
    """A reader's claim to fill one job's entry (see :meth:`LocalStatusCache.begin`)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _Entry:
    owner: str
    body: bytes
    expires: float


class LocalStatusCache:
    """Jobs' status bodies in memory, dropped on every published change, and
    served only while the subscription is proved live (see the module)."""

    def __init__(self, url: str, channel_prefix: str, bound: float) -> None:
        """Listen on ``url`` to every channel starting ``channel_prefix``
        (a job id follows it); ``bound``: the staleness bound in seconds."""
        self.url = url
        self.prefix = channel_prefix
        self.bound = bound
        self.ping_interval = bound / 4
        self._entries: dict[str, _Entry | Ticket] = {}
        self._lock = threading.Lock()
        #: Monotonic time until which entries may be served (0: not now).
        self._fresh_until = 0.0
        self._pid = 0
        self._stop = threading.Event()
        self._warned = False
        #: The listener's connection as ``CLIENT LIST`` names it.
        self.client_name = f"slidefarm-status-cache-{os.getpid()}-{id(self):x}"
        self.resets = 0  # how many times the subscription was (re)established or lost

    # -- the readers' side ----------------------------------------------------

    def serving(self) -> bool:
        """Whether entries may be served now (the listener is proved live)."""
        if self._pid != os.getpid():
            self._start()
            return False
        return time.monotonic() < self._fresh_until

    def get(self, job_id: str) -> tuple[str, bytes] | None:
        """``(owner, body)`` of ``job_id`` if held, live and servable now."""
        now = time.monotonic()
        if now >= self._fresh_until:
            if self._pid != os.getpid():
                self._start()
            return None
        entry = self._entries.get(job_id)
        if type(entry) is _Entry and entry.expires > now:
            return entry.owner, entry.body
        return None

    def begin(self, job_id: str) -> Ticket | None:
        """A ticket to fill ``job_id`` once its body has been read (from Redis
        or the database, after this call); ``None`` while not serving."""
        if not self.serving():
            return None
        ticket = Ticket()
        with self._lock:
            self._entries[job_id] = ticket
        return ticket

    def put(self, job_id: str, ticket: Ticket | None, owner: str, body: bytes, ttl: float) -> bool:
        """Keep ``owner``'s ``body`` of ``job_id`` for at most ``ttl`` seconds,
        unless the job was dropped since ``ticket`` was taken."""
        if ticket is None or ttl <= 0:
            return False
        entry = _Entry(owner, body, time.monotonic() + ttl)
        with self._lock:
            if self._entries.get(job_id) is not ticket:
                return False
            del self._entries[job_id]  # re-inserted last: the oldest go first
            if len(self._entries) >= MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]
            self._entries[job_id] = entry
        return True

    def drop(self, job_id: str) -> None:
        """Forget ``job_id`` (and refuse the fills of tickets taken before)."""
        with self._lock:
            self._entries.pop(job_id, None)

    def __len__(self) -> int:
        return sum(1 for e in list(self._entries.values()) if type(e) is _Entry)

    # -- the listener ---------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked child inherits the parent's entries but not its
            # thread: it starts empty, with its own listener.
            self._pid = os.getpid()
            self._entries = {}
            self._fresh_until = 0.0
            self._stop = threading.Event()
        thread = threading.Thread(target=self._listen, name="status-cache", daemon=True)
        thread.start()

    def stop(self) -> None:
        """End the listener (it stops serving at once)."""
        self._stop.set()
        self._reset()

    def _reset(self) -> None:
        with self._lock:
            self._fresh_until = 0.0
            self._entries.clear()
            self.resets += 1

    def _listen(self) -> None:
        stop = self._stop
        while not stop.is_set():
            pubsub = None
            try:
                client = redis.Redis.from_url(
                    self.url,
                    socket_timeout=max(self.bound, 1.0),
                    socket_connect_timeout=max(self.bound, 1.0),
                    client_name=self.client_name,
                )
                pubsub = client.pubsub()  # type: ignore[no-untyped-call]
                pubsub.psubscribe(self.prefix + "*")
                self._hear(pubsub, stop)
            except Exception as error:  # every failure: stop serving, subscribe again
                self._reset()
                if not stop.is_set():
                    # Once per outage, not at every try.
                    (log.debug if self._warned else log.warning)(
                        "status cache: no subscription (%s); reads go to Redis until it is back",
                        error,
                    )
                    self._warned = True
                    stop.wait(RESUBSCRIBE_DELAY)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
        self._reset()

    def _hear(self, pubsub: redis.client.PubSub, stop: threading.Event) -> None:
        prefix = len(self.prefix)
        pending: float | None = None  # when the unanswered ping was sent
        next_ping = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if pending is None and now >= next_ping:
                pending = now
                pubsub.ping()
            elif pending is not None and now - pending > self.bound:
                raise TimeoutError(f"no answer to a ping within {self.bound:g} s")
            message = pubsub.get_message(timeout=self.ping_interval)
            if message is None:
                continue
            kind = message["type"]
            if kind == "pmessage":
                channel = message["channel"]
                job_id = channel[prefix:]
                self.drop(job_id.decode() if isinstance(job_id, bytes) else job_id)
            elif kind == "pong":
                if pending is not None:
                    if self._warned:
                        log.warning("status cache: subscribed again; serving from memory")
                        self._warned = False
                    self._fresh_until = pending + self.bound
                    next_ping = pending + self.ping_interval
                    pending = None
            elif kind == "psubscribe":
                # Subscribed, or subscribed again after redis-py reconnected
                # on its own: whatever was published in between is lost, so
                # nothing held before may be served.
                self._reset()
