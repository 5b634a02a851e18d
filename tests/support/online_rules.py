"""The expand/contract rules of docs/design.md ("Schema changes"), checked
on the SQL a revision emits for PostgreSQL (Alembic's ``--sql`` mode): what
a migration would lock, and for how long, read from its statements."""

from __future__ import annotations

import io
import re

from alembic import command

from tests.support.schema_load import alembic_config_with_test_migrations

#: A PostgreSQL URL for ``--sql`` mode: nothing connects to it.
OFFLINE_URL = "postgresql://offline@localhost/none"

_CREATE_TABLE = re.compile(r"^CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.I)
_ON_TABLE = re.compile(
    r"\b(?:ALTER TABLE|ON|UPDATE|DELETE FROM|DROP TABLE)\s+(?:IF EXISTS\s+)?(\w+)"
)


def offline_sql(revision: str, previous: str) -> str:
    """What ``alembic upgrade previous:revision --sql`` prints for PostgreSQL."""
    cfg = alembic_config_with_test_migrations(OFFLINE_URL)
    buffer = io.StringIO()
    cfg.output_buffer = buffer
    command.upgrade(cfg, f"{previous}:{revision}", sql=True)
    return buffer.getvalue()


def statements(sql: str) -> list[str]:
    """The statements of ``sql``, comments dropped, whitespace collapsed."""
    lines = [line for line in sql.splitlines() if not line.startswith("--")]
    return [" ".join(s.split()) for s in "\n".join(lines).split(";") if s.strip()]


def violations(sql: str, contract: bool = False) -> list[str]:
    """Each statement of ``sql`` that would stop reads or writes of a table
    that existed before it for longer than an instant, or (unless
    ``contract``) that removes something running code may still use."""
    found: list[str] = []
    created: set[str] = set()
    in_transaction = False
    altered: set[str] = set()
    for statement in statements(sql):
        upper = statement.upper()
        if upper == "BEGIN":
            in_transaction, altered = True, set()
            continue
        if upper == "COMMIT":
            in_transaction = False
            continue
        if match := _CREATE_TABLE.match(statement):
            created.add(match.group(1))
            continue
        target = _ON_TABLE.search(statement)
        table = target.group(1) if target else ""
        if table in created or table == "alembic_version":
            continue

        def flag(why: str, statement: str = statement) -> None:
            found.append(f"{why}: {statement[:140]}")

        if upper.startswith("ALTER TABLE"):
            altered.add(table)
        if re.match(r"CREATE (UNIQUE )?INDEX", upper) and "CONCURRENTLY" not in upper:
            flag("index built under a lock that stops writes (use CONCURRENTLY)")
        if re.match(r"DROP INDEX", upper) and "CONCURRENTLY" not in upper:
            flag("index dropped under ACCESS EXCLUSIVE (use CONCURRENTLY)")
        if re.search(r"ADD CONSTRAINT .*\b(CHECK|FOREIGN KEY)", upper) and "NOT VALID" not in upper:
            flag("constraint checked against every row under its lock (add it NOT VALID)")
        if (
            re.search(r"ADD CONSTRAINT \w+ (UNIQUE|PRIMARY KEY)", upper)
            and "USING INDEX" not in upper
        ):
            flag(
                "unique index built under ACCESS EXCLUSIVE"
                " (build it CONCURRENTLY, then add it USING INDEX)"
            )
        if "VALIDATE CONSTRAINT" in upper and in_transaction:
            flag("validation inside a transaction keeps its ACCESS EXCLUSIVE lock")
        if match := re.search(r"ADD COLUMN (?:IF NOT EXISTS )?\w+ (.*)", upper):
            definition = match.group(1)
            default = re.search(r"DEFAULT (\S+)", definition)
            if "NOT NULL" in definition and default is None:
                flag("NOT NULL column without a default")
            if default is not None and "(" in default.group(1):
                flag("a default computed per row rewrites the table (use a constant)")
        if re.search(r"ALTER COLUMN \w+ (SET DATA )?TYPE", upper):
            flag("a type change rewrites the table")
        if "SET NOT NULL" in upper:
            flag("SET NOT NULL scans the table under ACCESS EXCLUSIVE")
        if re.match(r"(UPDATE|DELETE)\b", upper) and in_transaction and table in altered:
            flag("rows rewritten while the transaction holds ACCESS EXCLUSIVE on the table")
        if not contract and re.search(r"\bDROP (COLUMN|TABLE)\b|\bRENAME\b", upper):
            flag("destructive change in an expand migration (it belongs in a contract one)")
    return found
