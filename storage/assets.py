"""Assets: the images and documents tenants upload, stored once per tenant.

A file lives at ``<output>/assets/<owner>/<sha256[:2]>/<sha256>``: the same
bytes uploaded twice by one tenant are one row and one file; two tenants
never share either. Uploads are written to ``<output>/assets/.incoming/``
first and renamed into place, so a reader never sees half a file.

Every change to one tenant's assets (an upload, a delete, the removal of a
file after retention) runs under one per-tenant lock, so the stored-bytes
quota is checked in the same transaction as the insert and a file is never
removed while an upload of the same bytes is putting it back.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, insert, literal, select, update

from core.config import Settings
from core.sniff import IMAGE_KINDS, AssetRefused, Sniffed, sniff
from storage.cursors import decode_cursor, encode_cursor
from storage.db import Database, HasDatabase, database_of
from storage.errors import StorageError
from storage.jobs.locks import take_write_lock
from storage.jobs.values import utcnow
from storage.models import (
    ACTIVE_STATUSES,
    assets_table,
    job_assets_table,
    job_urls_table,
    jobs_table,
)

ASSETS_DIR = "assets"
INCOMING_DIR = ".incoming"
#: First key of the advisory lock that serializes one tenant's asset changes.
ADVISORY_ASSETS = 0x5F1E
_SAFE_OWNER = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_ACTIVE = [status.value for status in ACTIVE_STATUSES]


class AssetNotFound(StorageError):
    """No such asset (or it belongs to another tenant)."""


class AssetQuotaExceeded(StorageError):
    """Storing the asset would put the tenant past its stored-bytes cap."""


class AssetInUse(StorageError):
    """A scheduled, queued or processing job uses the asset."""


class AssetTooLarge(StorageError):
    """The upload is larger than its kind may be."""


@dataclass(frozen=True)
class AssetLimits:
    """What one upload and one tenant may store (the ``SLIDEFARM_*ASSET*`` settings)."""

    max_bytes: int
    max_image_bytes: int
    max_pixels: int
    quota: int | None

    @classmethod
    def from_settings(cls, settings: Settings) -> AssetLimits:
        """The limits ``settings`` set."""
        return cls(
            max_bytes=settings.max_asset_bytes,
            max_image_bytes=settings.max_image_asset_bytes,
            max_pixels=settings.max_asset_pixels,
            quota=settings.max_asset_storage_bytes or None,
        )


@dataclass(frozen=True)
class Asset:
    """One stored asset, as the store hands it out."""

    id: str
    owner: str
    sha256: str
    kind: str
    size_bytes: int
    width: int | None
    height: int | None
    pages: int | None
    created_at: datetime
    last_used_at: datetime


@dataclass(frozen=True)
class AssetPage:
    """A page of a tenant's assets, newest first, and the cursor of the next."""

    assets: list[Asset]
    next_cursor: str | None


def _asset(row: Any) -> Asset:
    return Asset(
        id=row.id,
        owner=row.owner,
        sha256=row.sha256,
        kind=row.kind,
        size_bytes=row.size_bytes,
        width=row.width,
        height=row.height,
        pages=row.pages,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


def owner_dir(output_dir: Path, owner: str) -> Path:
    """The folder of ``owner``'s asset files: its name when that is a safe
    path component, else a digest of it (never ``..`` or a slash)."""
    name = (
        owner if _SAFE_OWNER.fullmatch(owner) else "~" + hashlib.sha256(owner.encode()).hexdigest()
    )
    return output_dir / ASSETS_DIR / name


def asset_path(output_dir: Path, owner: str, sha256: str) -> Path:
    """Where the file of ``owner``'s asset with digest ``sha256`` lives."""
    return owner_dir(output_dir, owner) / sha256[:2] / sha256


def thumbnail_path(output_dir: Path, owner: str, sha256: str) -> Path:
    """Where the thumbnail of ``owner``'s image with digest ``sha256`` is kept
    once made (it goes with the asset's file)."""
    return asset_path(output_dir, owner, sha256).with_name(f"{sha256}.thumb.png")


def incoming_dir(output_dir: Path) -> Path:
    """Where uploads are written before they are renamed into place."""
    return output_dir / ASSETS_DIR / INCOMING_DIR


def _lock_owner(conn: Connection, owner: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(
            select(func.pg_advisory_xact_lock(literal(ADVISORY_ASSETS), func.hashtext(owner)))
        )
    else:
        take_write_lock(conn)


def link_assets(conn: Connection, job_id: str, asset_ids: Iterable[str]) -> None:
    """In ``conn``'s transaction, record that job ``job_id`` uses ``asset_ids``
    (see :meth:`AssetStore.link`)."""
    ids = sorted(set(asset_ids))
    if not ids:
        return
    # Touching the rows both proves they exist (and are the job's owner's)
    # and makes a concurrent retention DELETE wait, then see them as
    # recently used: a job never gets an asset deleted under it.
    job_owner = select(jobs_table.c.owner).where(jobs_table.c.id == job_id).scalar_subquery()
    touched = conn.execute(
        update(assets_table)
        .where(assets_table.c.id.in_(ids), assets_table.c.owner == job_owner)
        .values(last_used_at=utcnow())
    ).rowcount
    if touched != len(ids):
        raise AssetNotFound(f"job {job_id} names an asset its tenant does not have")
    linked = set(
        conn.execute(
            select(job_assets_table.c.asset_id).where(
                job_assets_table.c.job_id == job_id, job_assets_table.c.asset_id.in_(ids)
            )
        ).scalars()
    )
    new = [{"job_id": job_id, "asset_id": a} for a in ids if a not in linked]
    if new:
        conn.execute(insert(job_assets_table), new)


class AssetStore:
    """Tenants' assets: their rows in the database and their files on the output storage."""

    def __init__(self, db: Database | HasDatabase, output_dir: Path) -> None:
        """Assets in ``db`` (or a store's database), files under ``output_dir``."""
        self.db = database_of(db)
        self.output_dir = output_dir

    def path(self, asset: Asset) -> Path:
        """The file of ``asset``."""
        return asset_path(self.output_dir, asset.owner, asset.sha256)

    def thumbnail_path(self, asset: Asset) -> Path:
        """Where the thumbnail of ``asset`` is kept once made."""
        return thumbnail_path(self.output_dir, asset.owner, asset.sha256)

    def for_job(self, job_id: str) -> list[Asset]:
        """The assets job ``job_id`` uses, oldest first."""
        query = (
            select(assets_table)
            .join(job_assets_table, job_assets_table.c.asset_id == assets_table.c.id)
            .where(job_assets_table.c.job_id == job_id)
            .order_by(assets_table.c.created_at, assets_table.c.id)
        )
        with self.db.transaction(single=True) as conn:
            return [_asset(r) for r in conn.execute(query).all()]

    def ingest(
        self, owner: str, chunks: Iterable[bytes], limits: AssetLimits
    ) -> tuple[Asset, bool]:
        """Store the bytes ``chunks`` yield as an asset of ``owner`` (see
        :meth:`add`), written to a scratch file as they come.

        :class:`AssetTooLarge` as soon as they pass ``limits.max_bytes`` (the
        rest is never read), or once sniffed as an image larger than
        ``limits.max_image_bytes``; :class:`~core.sniff.AssetRefused` if they
        are not an accepted kind.
        """
        folder = incoming_dir(self.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=folder, prefix="upload-")
        staged = Path(name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(handle, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise AssetTooLarge(
                            f"the upload is larger than {limits.max_bytes} bytes "
                            "(SLIDEFARM_MAX_ASSET_BYTES)"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise AssetRefused("the upload is empty", "invalid_asset")
            with staged.open("rb") as data:
                sniffed = sniff(data, max_pixels=limits.max_pixels)
            if sniffed.kind in IMAGE_KINDS and size > limits.max_image_bytes:
                raise AssetTooLarge(
                    f"the image is {size} bytes, more than the {limits.max_image_bytes} "
                    "allowed for images (SLIDEFARM_MAX_IMAGE_ASSET_BYTES)"
                )
            return self.add(
                owner,
                staged,
                sha256=digest.hexdigest(),
                size_bytes=size,
                sniffed=sniffed,
                quota=limits.quota,
            )
        finally:
            staged.unlink(missing_ok=True)

    def add(
        self,
        owner: str,
        staged: Path,
        *,
        sha256: str,
        size_bytes: int,
        sniffed: Sniffed,
        quota: int | None,
        now: datetime | None = None,
    ) -> tuple[Asset, bool]:
        """Store the upload at ``staged`` (under :func:`incoming_dir`) as an
        asset of ``owner``: ``(asset, True)`` for a new one, ``(asset, False)``
        when ``owner`` already has these bytes (``staged`` is then dropped).

        :class:`AssetQuotaExceeded` if the new bytes would put ``owner`` past
        ``quota`` stored bytes; checked under the tenant's lock in the
        insert's transaction, so racing uploads never overshoot it.
        """
        now = now or utcnow()
        target = asset_path(self.output_dir, owner, sha256)
        try:
            with self.db.transaction() as conn:
                _lock_owner(conn, owner)
                # One conditional write finds and touches an existing asset: a
                # retention DELETE that got there first leaves nothing to touch,
                # and then the bytes are stored anew below.
                row = conn.execute(
                    update(assets_table)
                    .where(assets_table.c.owner == owner, assets_table.c.sha256 == sha256)
                    .values(last_used_at=now)
                    .returning(*assets_table.c)
                ).first()
                if row is not None:
                    if not target.exists():  # lost from the disk: these bytes restore it
                        self._place(staged, target)
                    return _asset(row), False
                if quota is not None:
                    stored = conn.execute(
                        select(func.coalesce(func.sum(assets_table.c.size_bytes), 0)).where(
                            assets_table.c.owner == owner
                        )
                    ).scalar_one()
                    if int(stored) + size_bytes > quota:
                        raise AssetQuotaExceeded(
                            f"the tenant stores {int(stored)} bytes of assets; "
                            f"{size_bytes} more would pass the {quota} allowed "
                            "(SLIDEFARM_MAX_ASSET_STORAGE_BYTES): delete some assets"
                        )
                asset = Asset(
                    id=str(uuid.uuid4()),
                    owner=owner,
                    sha256=sha256,
                    kind=sniffed.kind,
                    size_bytes=size_bytes,
                    width=sniffed.width,
                    height=sniffed.height,
                    pages=sniffed.pages,
                    created_at=now,
                    last_used_at=now,
                )
                conn.execute(insert(assets_table).values(**asdict(asset)))
                # In place before the commit: a committed row always has its file.
                self._place(staged, target)
                return asset, True
        finally:
            staged.unlink(missing_ok=True)

    @staticmethod
    def _place(staged: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)

    def get(self, asset_id: str, *, owner: str | None = None) -> Asset:
        """The asset ``asset_id`` (of ``owner`` only, unless ``None``);
        :class:`AssetNotFound` otherwise."""
        query = select(assets_table).where(assets_table.c.id == asset_id)
        if owner is not None:
            query = query.where(assets_table.c.owner == owner)
        with self.db.transaction(single=True) as conn:
            row = conn.execute(query).first()
        if row is None:
            raise AssetNotFound(f"no asset {asset_id}")
        return _asset(row)

    def find(self, asset_ids: Iterable[str], *, owner: str) -> dict[str, Asset]:
        """Those of ``asset_ids`` that are ``owner``'s assets, by id, in one
        query (another tenant's are simply not there)."""
        ids = sorted(set(asset_ids))
        if not ids:
            return {}
        query = select(assets_table).where(
            assets_table.c.id.in_(ids), assets_table.c.owner == owner
        )
        with self.db.transaction(single=True) as conn:
            return {row.id: _asset(row) for row in conn.execute(query)}

    def record_pages(self, asset_id: str, pages: int) -> bool:
        """Record the page count a worker read from the document ``asset_id``
        (a PDF is not counted at upload), once: later submissions naming it
        are then checked against the deck limits at once. ``False`` if it
        was known already (or the asset is gone)."""
        with self.db.transaction() as conn:
            changed = conn.execute(
                update(assets_table)
                .where(assets_table.c.id == asset_id, assets_table.c.pages.is_(None))
                .values(pages=pages)
            ).rowcount
        return bool(changed)

    def list_assets(
        self, *, owner: str | None, limit: int = 50, cursor: str | None = None
    ) -> AssetPage:
        """A page of assets (``owner``'s, or everyone's for ``None``), newest first."""
        query = select(assets_table)
        if owner is not None:
            query = query.where(assets_table.c.owner == owner)
        if cursor is not None:
            created, last_id = decode_cursor(cursor)
            query = query.where(
                (assets_table.c.created_at < created)
                | and_(assets_table.c.created_at == created, assets_table.c.id < last_id)
            )
        query = query.order_by(assets_table.c.created_at.desc(), assets_table.c.id.desc())
        with self.db.transaction(single=True) as conn:
            rows = conn.execute(query.limit(limit + 1)).all()
        assets = [_asset(r) for r in rows[:limit]]
        return AssetPage(
            assets,
            encode_cursor(assets[-1].created_at, assets[-1].id) if len(rows) > limit else None,
        )

    def stored_bytes(self, owner: str) -> int:
        """The bytes of ``owner``'s assets."""
        with self.db.transaction(single=True) as conn:
            total = conn.execute(
                select(func.coalesce(func.sum(assets_table.c.size_bytes), 0)).where(
                    assets_table.c.owner == owner
                )
            ).scalar_one()
        return int(total)

    def delete(self, asset_id: str, *, owner: str | None = None) -> None:
        """Delete the asset and its file; :class:`AssetNotFound` if there is no
        such asset, :class:`AssetInUse` while a scheduled, queued or processing job uses it."""
        where = [assets_table.c.id == asset_id]
        if owner is not None:
            where.append(assets_table.c.owner == owner)
        in_use = exists().where(
            job_assets_table.c.asset_id == assets_table.c.id,
            job_assets_table.c.job_id == jobs_table.c.id,
            jobs_table.c.status.in_(_ACTIVE),
        )
        with self.db.transaction() as conn:
            gone = conn.execute(
                delete(assets_table)
                .where(*where, ~in_use)
                .returning(assets_table.c.owner, assets_table.c.sha256)
            ).first()
            if gone is None:
                found = conn.execute(select(assets_table.c.id).where(*where)).first()
                if found is None:
                    raise AssetNotFound(f"no asset {asset_id}")
                raise AssetInUse(
                    f"asset {asset_id} is used by a scheduled, queued or processing job; "
                    "delete it once that job has ended"
                )
        self._remove_files([(gone.owner, gone.sha256)])

    def link(
        self, job_id: str, asset_ids: Iterable[str], *, conn: Connection | None = None
    ) -> None:
        """Record that job ``job_id`` uses ``asset_ids`` (each of the job's
        owner): none of them is deleted while the job is queued or
        processing. ``conn``: do it in that transaction (the job's submission).

        :class:`AssetNotFound` if one is not an asset of the job's owner.
        """
        ids = sorted(set(asset_ids))
        if not ids:
            return
        if conn is None:
            with self.db.transaction() as own:
                link_assets(own, job_id, ids)
        else:
            link_assets(conn, job_id, ids)

    def fetched(self, job_id: str, url: str) -> str | None:
        """The id of the asset job ``job_id`` made of the image at ``url``
        (see :meth:`remember_fetch`), or ``None`` if it has not fetched it."""
        with self.db.transaction(single=True) as conn:
            found = conn.execute(
                select(job_urls_table.c.asset_id).where(
                    job_urls_table.c.job_id == job_id, job_urls_table.c.url == url
                )
            ).scalar()
        return None if found is None else str(found)

    def remember_fetch(self, job_id: str, url: str, asset_id: str) -> None:
        """Record that job ``job_id`` fetched ``url`` as ``asset_id`` (an asset
        of the job's owner), and link the asset to the job, in one
        transaction: a retry of the job reuses it, and it stays while the job
        does. :class:`AssetNotFound` if the asset is not the job's owner's."""
        with self.db.transaction() as conn:
            self.link(job_id, [asset_id], conn=conn)
            known = conn.execute(
                select(job_urls_table.c.asset_id).where(
                    job_urls_table.c.job_id == job_id, job_urls_table.c.url == url
                )
            ).first()
            if known is None:
                conn.execute(
                    insert(job_urls_table).values(job_id=job_id, url=url, asset_id=asset_id)
                )
            else:
                conn.execute(
                    update(job_urls_table)
                    .where(job_urls_table.c.job_id == job_id, job_urls_table.c.url == url)
                    .values(asset_id=asset_id)
                )

    def delete_unused_older_than(
        self, days: float, *, now: datetime | None = None, limit: int = 500
    ) -> list[str]:
        """Delete up to ``limit`` assets unused for ``days`` (last uploaded or
        linked before then) that no job links to; remove their files; return
        their ids. One conditional DELETE ... RETURNING decides, so a link
        made meanwhile keeps its asset."""
        cutoff = (now or utcnow()) - timedelta(days=days)
        unused = and_(
            assets_table.c.last_used_at < cutoff,
            ~exists().where(job_assets_table.c.asset_id == assets_table.c.id),
        )
        batch = select(assets_table.c.id).where(unused).limit(limit).scalar_subquery()
        with self.db.transaction() as conn:
            gone = conn.execute(
                delete(assets_table)
                .where(assets_table.c.id.in_(batch), unused)
                .returning(assets_table.c.id, assets_table.c.owner, assets_table.c.sha256)
            ).all()
        self._remove_files([(r.owner, r.sha256) for r in gone])
        return [r.id for r in gone]

    def _remove_files(self, files: Sequence[tuple[str, str]]) -> None:
        # Under the tenant's lock, and only if no row has these bytes again:
        # an upload that re-created the asset meanwhile keeps its file.
        for owner, sha256 in files:
            with self.db.transaction() as conn:
                _lock_owner(conn, owner)
                again = conn.execute(
                    select(assets_table.c.id).where(
                        assets_table.c.owner == owner, assets_table.c.sha256 == sha256
                    )
                ).first()
                if again is None:
                    asset_path(self.output_dir, owner, sha256).unlink(missing_ok=True)
                    thumbnail_path(self.output_dir, owner, sha256).unlink(missing_ok=True)
