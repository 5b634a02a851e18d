"""Who may do what: tenants, API keys, dashboard sessions and webhook secrets.

A key reads ``sf_<id>_<secret>``: the ``sf_`` prefix lets secret scanners
match it, the id finds its row, and only a SHA-256 of the secret is kept, so a
copy of the database gives no working key. Secrets are 240-bit random, which
makes a slow password hash pointless; comparison is constant-time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exc, insert, select, update

from storage.db import Database, HasDatabase, database_of
from storage.errors import StorageError
from storage.jobs.values import utcnow
from storage.models import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    keys_table,
    sessions_table,
    tenants_table,
)

KEY_PREFIX = "sf"
_ALPHABET = string.ascii_letters + string.digits
_SECRET_LENGTH = 40  # 40 characters of 62: about 238 bits
_KEY_RE = re.compile(r"^sf_([0-9a-f]{12})_([A-Za-z0-9]{40})$")
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
#: Pattern of anything shaped like a key, for redacting logs.
KEY_PATTERN = re.compile(r"sf_[0-9A-Za-z]+_[0-9A-Za-z]+")
SESSION_TTL = timedelta(hours=12)


class UnknownTenant(StorageError):
    """No such tenant."""


class InvalidTenantName(StorageError):
    """Tenant names are 1 to 64 characters: lowercase letters, digits, '_', '.', '-'."""


class InvalidLimit(StorageError):
    """A tenant's weight must be above 0, max_running 0 or more, max_priority -100 to 100."""


class Keep(enum.Enum):
    """A limit :meth:`AccessStore.set_limits` leaves as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's share of the workers and its caps; ``None``: the setting
    (SLIDEFARM_MAX_RUNNING, SLIDEFARM_MAX_PRIORITY) applies."""

    tenant: str
    weight: float = 1.0
    max_running: int | None = None
    max_priority: int | None = None


def _limits(row: Any) -> TenantLimits:
    return TenantLimits(row.name, float(row.weight), row.max_running, row.max_priority)


_LIMIT_COLUMNS = (
    tenants_table.c.name,
    tenants_table.c.weight,
    tenants_table.c.max_running,
    tenants_table.c.max_priority,
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request speaks for."""

    tenant: str
    admin: bool
    key_id: str | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed (never its secret)."""

    id: str
    tenant: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None

    @property
    def prefix(self) -> str:
        return f"{KEY_PREFIX}_{self.id}_"


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: ``token`` is shown once and never again; so is
    ``webhook_secret``, set only when the key created its tenant."""

    key: ApiKey
    token: str
    webhook_secret: str | None


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _digest(key_id: str, secret: str) -> str:
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A fresh signing secret (``whsec_`` and 40 random characters)."""
    return f"whsec_{_random(_SECRET_LENGTH)}"


def parse_key(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else ``None``."""
    match = _KEY_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


def _key(row: Any) -> ApiKey:
    return ApiKey(row.id, row.tenant, bool(row.admin), row.created_at, row.revoked_at)


class AccessStore:
    """Tenants, keys and sessions."""

    def __init__(self, db: Database | HasDatabase) -> None:
        """On ``db`` (or the database of a store such as the job store)."""
        self.db = database_of(db)

    # -- tenants -----------------------------------------------------------

    def ensure_tenant(self, name: str) -> str | None:
        """Create tenant ``name`` unless it exists; return its webhook secret
        if it was created now (the one time it is shown), else ``None``."""
        if not TENANT_RE.match(name):
            raise InvalidTenantName()
        with self.db.transaction(single=True) as conn:
            if conn.execute(
                select(tenants_table.c.name).where(tenants_table.c.name == name)
            ).first():
                return None
        secret = new_webhook_secret()
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    insert(tenants_table).values(
                        name=name, webhook_secret=secret, created_at=utcnow()
                    )
                )
        except exc.IntegrityError:
            return None  # created in between by someone else
        return secret

    def tenants(self) -> list[str]:
        with self.db.transaction(single=True) as conn:
            return [
                r.name
                for r in conn.execute(select(tenants_table.c.name).order_by(tenants_table.c.name))
            ]

    def limits(self, tenant: str) -> TenantLimits:
        """``tenant``'s weight and caps (the defaults for a tenant with no row,
        such as the open mode's before its first webhook)."""
        with self.db.transaction(single=True) as conn:
            row = conn.execute(
                select(*_LIMIT_COLUMNS).where(tenants_table.c.name == tenant)
            ).first()
        return TenantLimits(tenant) if row is None else _limits(row)

    def all_limits(self) -> list[TenantLimits]:
        """Every tenant's weight and caps, by name."""
        with self.db.transaction(single=True) as conn:
            rows = conn.execute(select(*_LIMIT_COLUMNS).order_by(tenants_table.c.name))
            return [_limits(r) for r in rows]

    def set_limits(
        self,
        tenant: str,
        *,
        weight: float | Keep = KEEP,
        max_running: int | Keep | None = KEEP,
        max_priority: int | Keep | None = KEEP,
    ) -> TenantLimits:
        """Change ``tenant``'s ``weight`` (above 0), ``max_running`` (0 or
        more) and ``max_priority`` (-100 to 100); ``None`` puts a cap back to
        its setting, :data:`KEEP` (the default) leaves a value as it is.
        Return the limits now in force. :class:`InvalidLimit` for a value out
        of range, :class:`UnknownTenant` for a tenant with no row."""
        values: dict[str, Any] = {}
        if weight is not KEEP:
            if isinstance(weight, bool) or not (math.isfinite(weight) and weight > 0):
                raise InvalidLimit(f"weight must be a number above 0, not {weight!r}")
            values["weight"] = float(weight)
        if max_running is not KEEP:
            if max_running is not None and (isinstance(max_running, bool) or max_running < 0):
                raise InvalidLimit(f"max_running must be 0 or more, not {max_running!r}")
            values["max_running"] = max_running
        if max_priority is not KEEP:
            if max_priority is not None and (
                isinstance(max_priority, bool) or not MIN_PRIORITY <= max_priority <= MAX_PRIORITY
            ):
                raise InvalidLimit(
                    f"max_priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}, "
                    f"not {max_priority!r}"
                )
            values["max_priority"] = max_priority
        with self.db.transaction() as conn:
            statement = update(tenants_table).where(tenants_table.c.name == tenant)
            if values:
                statement = statement.values(**values)
            else:  # nothing to change: read, with the same answer for an unknown tenant
                statement = statement.values(name=tenants_table.c.name)
            row = conn.execute(statement.returning(*_LIMIT_COLUMNS)).first()
        if row is None:
            raise UnknownTenant()
        return _limits(row)

    def webhook_secrets(self, tenant: str, *, now: datetime | None = None) -> list[str]:
        """The secrets that sign ``tenant``'s webhooks now: the current one,
        and during a rotation's grace period the previous one too. A tenant
        with no row yet (the open mode's) gets one."""
        now = now or utcnow()
        query = select(tenants_table).where(tenants_table.c.name == tenant)
        with self.db.transaction(single=True) as conn:
            row = conn.execute(query).first()
        if row is None:
            self.ensure_tenant(tenant)
            with self.db.transaction(single=True) as conn:
                row = conn.execute(query).first()
        if row is None:
            raise UnknownTenant()
        found = [row.webhook_secret]
        if (
            row.webhook_secret_previous
            and row.previous_expires_at
            and row.previous_expires_at > now
        ):
            found.append(row.webhook_secret_previous)
        return found

    def rotate_webhook_secret(self, tenant: str, *, grace: float) -> str:
        """A new current secret for ``tenant``; the old one keeps signing for
        ``grace`` seconds, so receivers can switch without losing a delivery."""
        secret = new_webhook_secret()
        with self.db.transaction() as conn:
            row = conn.execute(
                update(tenants_table)
                .where(tenants_table.c.name == tenant)
                .values(
                    webhook_secret_previous=tenants_table.c.webhook_secret,
                    previous_expires_at=utcnow() + timedelta(seconds=grace),
                    webhook_secret=secret,
                )
                .returning(tenants_table.c.name)
            ).first()
        if row is None:
            raise UnknownTenant()
        return secret

    # -- keys --------------------------------------------------------------

    def create_key(self, tenant: str, *, admin: bool = False) -> NewKey:
        """A new key for ``tenant`` (created if new)."""
        webhook_secret = self.ensure_tenant(tenant)
        key_id = secrets.token_hex(6)
        secret = _random(_SECRET_LENGTH)
        now = utcnow()
        with self.db.transaction() as conn:
            conn.execute(
                insert(keys_table).values(
                    id=key_id,
                    tenant=tenant,
                    secret_hash=_digest(key_id, secret),
                    admin=admin,
                    created_at=now,
                )
            )
        return NewKey(
            ApiKey(key_id, tenant, admin, now, None),
            f"{KEY_PREFIX}_{key_id}_{secret}",
            webhook_secret,
        )

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        query = select(keys_table).order_by(keys_table.c.tenant, keys_table.c.created_at)
        if tenant is not None:
            query = query.where(keys_table.c.tenant == tenant)
        with self.db.transaction(single=True) as conn:
            return [_key(r) for r in conn.execute(query)]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key (and end its dashboard sessions); ``False`` if unknown
        or already revoked."""
        key_id = key_id.removeprefix(f"{KEY_PREFIX}_").split("_")[0]
        with self.db.transaction() as conn:
            done = conn.execute(
                update(keys_table)
                .where(keys_table.c.id == key_id, keys_table.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            ).rowcount
            conn.execute(delete(sessions_table).where(sessions_table.c.key_id == key_id))
        return done == 1

    def verify(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked key; ``None`` for anything else."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        with self.db.transaction(single=True) as conn:
            row = conn.execute(select(keys_table).where(keys_table.c.id == key_id)).first()
        expected = row.secret_hash if row is not None else "0" * 64
        matches = hmac.compare_digest(expected, _digest(key_id, secret))
        if row is None or not matches or row.revoked_at is not None:
            return None
        return Principal(row.tenant, bool(row.admin), row.id)

    def live_key(self, key_id: str) -> Principal | None:
        """The principal of key ``key_id`` while it is unrevoked (for what a
        key signed earlier, e.g. an output link); ``None`` for anything else."""
        if not re.fullmatch(r"[0-9a-f]{12}", key_id):
            return None
        with self.db.transaction(single=True) as conn:
            row = conn.execute(
                select(
                    keys_table.c.id,
                    keys_table.c.tenant,
                    keys_table.c.admin,
                    keys_table.c.revoked_at,
                ).where(keys_table.c.id == key_id)
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        return Principal(row.tenant, bool(row.admin), row.id)

    # -- dashboard sessions ------------------------------------------------

    def create_session(self, principal: Principal) -> str:
        """A sign-in token for the dashboard standing for ``principal``'s key."""
        if principal.key_id is None:
            raise ValueError("only a key can sign in")
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self.db.transaction() as conn:
            conn.execute(delete(sessions_table).where(sessions_table.c.expires_at < now))
            conn.execute(
                insert(sessions_table).values(
                    token_hash=_token_digest(token),
                    key_id=principal.key_id,
                    created_at=now,
                    expires_at=now + SESSION_TTL,
                )
            )
        return token

    def session(self, token: str) -> Principal | None:
        """The principal of a live session whose key is still valid."""
        if not 20 <= len(token) <= 100:
            return None
        query = (
            select(
                keys_table.c.id,
                keys_table.c.tenant,
                keys_table.c.admin,
                keys_table.c.revoked_at,
                sessions_table.c.expires_at,
            )
            .select_from(
                sessions_table.join(keys_table, keys_table.c.id == sessions_table.c.key_id)
            )
            .where(sessions_table.c.token_hash == _token_digest(token))
        )
        with self.db.transaction(single=True) as conn:
            row = conn.execute(query).first()
        if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
            return None
        return Principal(row.tenant, bool(row.admin), row.id)

    def end_session(self, token: str) -> None:
        with self.db.transaction(single=True) as conn:
            conn.execute(
                delete(sessions_table).where(sessions_table.c.token_hash == _token_digest(token))
            )
