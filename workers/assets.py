"""The assets one job uses, as files on the render host.

A deck names assets by id (its source document, its slides' images); each
must belong to the job's owner, which the submission checked and linked, and
is checked again here: a job never reads another tenant's file.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from core.config import Settings
from storage import Job, JobStore, StorageError
from storage.assets import Asset, AssetNotFound, AssetStore

log = logging.getLogger("slidefarm.assets")


class AssetUnavailable(Exception):
    """An asset the deck names cannot be used (gone, another tenant's, or
    of the wrong kind): the job fails, retrying would not help."""


class JobAssets:
    """The files of ``job``'s assets."""

    def __init__(self, store: JobStore, job: Job, settings: Settings) -> None:
        self.store = AssetStore(store, settings.output_dir)
        self.job = job

    def file(self, asset_id: str, kinds: Collection[str], what: str) -> tuple[Asset, Path]:
        """The asset ``asset_id`` of the job's owner and its file;
        :class:`AssetUnavailable` unless it exists, is one of ``kinds`` and its
        file is in place. ``what`` names its use in the error (``"slide 3's image"``)."""
        try:
            asset = self.store.get(asset_id, owner=self.job.owner)
        except AssetNotFound as missing:
            raise AssetUnavailable(f"{what}: asset {asset_id} does not exist") from missing
        if asset.kind not in kinds:
            raise AssetUnavailable(
                f"{what}: asset {asset_id} is a {asset.kind.upper()}, "
                f"not one of {', '.join(k.upper() for k in sorted(kinds))}"
            )
        path = self.store.path(asset)
        if not path.is_file():
            raise AssetUnavailable(f"{what}: the file of asset {asset_id} is missing")
        return asset, path

    def record_pages(self, asset: Asset, pages: int) -> None:
        """Keep the page count of a document whose count was not known at
        upload (a PDF), so the next deck naming it is checked at submission.
        Best effort: the render goes on if the database does not answer."""
        if asset.pages is not None:
            return
        try:
            self.store.record_pages(asset.id, pages)
        except StorageError:
            log.warning("asset %s: could not record its %d pages", asset.id, pages)
