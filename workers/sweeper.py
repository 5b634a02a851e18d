"""The sweeper: recovery, scheduled jobs coming due, wake-ups for queued jobs
nobody may be awake for, webhooks due, retention (of jobs and of assets) and
orphan clean-up.

It runs as a thread in every worker's main process, but only the holder of
the ``sweeper`` lease (a database row) sweeps, so there is exactly one at a
time across the cluster, no extra scheduler process, and no single point of
failure: when the holder dies its lease expires and another worker takes it.
The same thread keeps this worker's registry row current.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.config import Settings
from storage import JobStore, Status, StorageError
from storage.assets import AssetStore, incoming_dir
from storage.deliveries import WebhookDeliveries
from storage.files import PARTIAL_DIR, SEGMENTS_DIR, remove_job_files, remove_segment_files
from storage.leases import KeptLease, LeaseLost, LeaseManager
from storage.models import SegmentStatus
from storage.registry import WorkerRegistry
from storage.segments import SegmentStore
from workers.batches import sweep_batches
from workers.speech import prune_cache

log = logging.getLogger("slidefarm.sweeper")

LEASE_NAME = "sweeper"
#: An upload's scratch file untouched this long is left over from a crash
#: (a live upload writes to it as its bytes arrive).
INCOMING_GRACE = 3600.0
#: Most wake-ups one sweep sends for jobs found waiting past the dispatch
#: timeout (a lost message, or a retry come due): each wakes a worker that
#: then claims until nothing may run, so a few go a long way, and thousands
#: of jobs waiting behind a tenant's cap cost a few cheap claims, not one
#: message each. Jobs that just became runnable (requeued, or scheduled and
#: come due) get one wake-up each, as a submission does, so a farm of any
#: size starts on them at once.
MAX_WAKES = 16


class Sweeper:
    """One sweep at a time across the cluster; see the module docstring."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        worker_name: str,
        wake: Callable[[int], object],
        send_webhook: Callable[[str], None] | None = None,
    ) -> None:
        """``wake(n)`` sends ``n`` wake-ups to the workers."""
        self.store = store
        self.settings = settings
        self.name = worker_name
        self.wake = wake
        self.send_webhook = send_webhook
        self.leases = LeaseManager(store)
        self.registry = WorkerRegistry(store)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_orphan_scan = 0.0

    # -- thread ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="slidefarm-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.leases.release(LEASE_NAME, self.name)
        except StorageError:
            pass

    def _run(self) -> None:
        every = self.settings.sweep_every
        # A worker that does not hold the lease touches the database (its
        # registry row, a try for the lease) only this often: each touch is
        # a connection opened and closed, and a farm of them adds up (the
        # connection budget). Often enough to stay alive (three touches per
        # SLIDEFARM_STALE_AFTER) and to take over a dead sweeper's lease
        # within its expiry plus this.
        # The touches are spread: the first at a random moment of that
        # period, each next one 75-100% of it later, so that workers started
        # together do not all open a connection in the same moment ever after.
        quiet = max(every, self.settings.stale_after / 3)
        next_touch = time.monotonic() + random.uniform(0, quiet)
        sweeping = False
        while not self._stop.wait(every):
            if not sweeping and time.monotonic() < next_touch:
                continue
            next_touch = time.monotonic() + quiet * random.uniform(0.75, 1.0)
            try:
                self.registry.seen(self.name)
                sweeping = self.sweep_once()
            except StorageError as error:
                sweeping = False
                log.warning("sweeper: database unavailable (%s); trying again", error)
            except Exception:
                log.exception("sweeper: sweep failed; trying again")
            finally:
                # Nothing to do until the next sweep: hold no connection
                # meanwhile (the connection budget: README).
                self.store.db.release_idle()

    # -- one sweep ---------------------------------------------------------

    def sweep_once(self, *, force_orphan_scan: bool = False) -> bool:
        """Sweep if this worker holds the lease; ``True`` if it did.

        The lease is renewed while the sweep runs, however long it takes, and
        the sweep stops between two units of work if a renewal failed (the
        lease may be another worker's by then): never two sweeps at once.
        """
        ttl = max(self.settings.sweep_every * 3, 1.0)
        if not self.leases.acquire(LEASE_NAME, self.name, ttl):
            return False
        with KeptLease(self.leases, LEASE_NAME, self.name, ttl) as lease:
            try:
                self._sweep(lease, force_orphan_scan)
            except LeaseLost:
                log.warning("sweeper: lease not renewed in time; sweep stopped")
        return True

    def _sweep(self, lease: KeptLease, force_orphan_scan: bool) -> None:
        lease.check()
        requeued = 0
        for recovery in self.store.recover_stale(self.settings.stale_after):
            log.warning(
                "sweeper: job %s %s (%s stopped heartbeating)",
                recovery.job_id,
                "requeued" if recovery.action is Status.QUEUED else recovery.action,
                recovery.worker,
            )
            if recovery.action is Status.QUEUED:
                requeued += 1
            else:
                remove_job_files(self.settings.output_dir, recovery.job_id)
        segments = SegmentStore(self.store.db)
        for recovered in segments.recover_stale(self.settings.stale_after):
            log.warning(
                "sweeper: job %s %s %s (%s stopped heartbeating)",
                recovered.segment.job_id,
                recovered.segment.label,
                "requeued" if recovered.action is SegmentStatus.QUEUED else recovered.action,
                recovered.segment.worker,
            )
            if recovered.action is SegmentStatus.QUEUED:
                requeued += 1
        if requeued:
            self.wake(requeued)
        lease.check()
        # Segments of jobs that ended without dropping them (cancelled or
        # failed while queued, or a worker cut off at the end).
        for job_id in segments.drop_ended():
            remove_segment_files(self.settings.output_dir, job_id)
        lease.check()
        promoted = self.store.promote_due()
        if promoted:
            log.info("sweeper: %d scheduled job(s) came due; queued", len(promoted))
            self.wake(len(promoted))
        lease.check()
        waiting = self.store.due_for_dispatch(self.settings.dispatch_timeout)
        if waiting:
            log.warning(
                "sweeper: %d queued job(s) due with no wake-up for them (lost, not sent, "
                "or a retry come due); waking %d worker(s)",
                len(waiting),
                min(len(waiting), MAX_WAKES),
            )
            self.wake(min(len(waiting), MAX_WAKES))
        lease.check()
        if self.send_webhook is not None:
            # Webhooks of jobs finalized by the API or by recovery, retries
            # after their backoff, and tasks the broker lost.
            for job_id in WebhookDeliveries(self.store).due_webhooks(
                resend_after=self.settings.dispatch_timeout
            ):
                self.send_webhook(job_id)
        lease.check()
        # Batches whose last job ended unsettled; their webhooks due.
        sweep_batches(self.store, self.settings, webhooks=self.send_webhook is not None)
        now = time.monotonic()
        if force_orphan_scan or now - self._last_orphan_scan >= self.settings.orphan_scan_interval:
            self._last_orphan_scan = now
            lease.check()
            # One bounded batch per sweep; the next sweeps take the rest.
            for job_id in self.store.delete_older_than(self.settings.retention_days):
                remove_job_files(self.settings.output_dir, job_id)
            lease.check()
            # After the jobs: a job deleted just now unlinks its assets (the
            # links cascade), and they age out from their last use.
            assets = AssetStore(self.store, self.settings.output_dir)
            gone = assets.delete_unused_older_than(self.settings.asset_retention_days)
            if gone:
                log.info("sweeper: deleted %d asset(s) unused for a while", len(gone))
            lease.check()
            pruned = prune_cache(self.settings.output_dir, self.settings.speech_cache_days)
            if pruned:
                log.info("sweeper: pruned %d sentence(s) from the speech cache", pruned)
            lease.check()
            self.remove_orphans(lease)

    def remove_orphans(self, lease: KeptLease | None = None) -> int:
        """Remove files that belong to no live attempt: scratch folders of
        attempts that are over, and output folders of jobs that are not
        completed or no longer exist. Young entries are left for a grace
        period, so a publish in flight is never raced."""
        output = self.settings.output_dir
        if not output.is_dir():
            return 0
        grace = max(self.settings.stale_after, 1.0)
        cutoff = time.time() - grace
        removed = 0

        scratch_root = output / PARTIAL_DIR
        partials: list[tuple[Path, str, int | None]] = []
        if scratch_root.is_dir():
            for entry in scratch_root.iterdir():
                job_id, _, suffix = entry.name.partition(".")
                attempt = int(suffix) if suffix.isdigit() else None
                partials.append((entry, job_id, attempt))
        finals = [
            e
            for e in output.iterdir()
            if e.is_dir() and e.name != PARTIAL_DIR and len(e.name) == 36
        ]
        owners = self.store.attempt_owners(
            sorted({j for _, j, _ in partials} | {e.name for e in finals})
        )
        for entry, job_id, attempt in partials:
            if lease is not None:
                lease.check()
            owner = owners.get(job_id)
            live = (
                owner is not None and attempt is not None and owner == (Status.PROCESSING, attempt)
            )
            if not live and _mtime(entry) < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        for entry in finals:
            if lease is not None:
                lease.check()
            owner = owners.get(entry.name)
            if (owner is None or owner[0] is not Status.COMPLETED) and _mtime(entry) < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        split_root = output / SEGMENTS_DIR
        if split_root.is_dir():
            # Segment folders of jobs no longer split (ended, or deleted).
            entries = [e for e in split_root.iterdir() if _mtime(e) < cutoff]
            split = SegmentStore(self.store.db).jobs_with_segments([e.name for e in entries])
            for entry in entries:
                if lease is not None:
                    lease.check()
                if entry.name not in split:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
        incoming = incoming_dir(output)
        if incoming.is_dir():
            # An upload's scratch file is renamed or removed by its request;
            # one this old belongs to an API process that died mid-upload.
            stale_upload = time.time() - INCOMING_GRACE
            for entry in incoming.iterdir():
                if _mtime(entry) < stale_upload:
                    entry.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.warning("sweeper: removed %d orphaned output folder(s) or upload(s)", removed)
        return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
