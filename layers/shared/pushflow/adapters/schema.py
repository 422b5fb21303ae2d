"""The schema on deploy: apply the SQL migrations PostgreSQL has not seen yet.

`Repository.migrate` applies the pending files in one transaction under an
advisory lock and records them in `schema_migrations`; a failing file rolls
the whole run back. Around it, this module waits for a database that is still
starting (a new RDS instance behind a new proxy refuses connections for a
while) and turns a failure into a message a deployer can act on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pg8000.exceptions import DatabaseError

from pushflow.adapters.postgres import Repository
from pushflow.domain.errors import PushflowError, TransientDatabaseError


class MigrationsMissing(PushflowError):
    """The package holds no migrations: deploying it would leave the schema behind."""


class MigrationFailed(PushflowError):
    """A migration was refused by PostgreSQL; nothing of the run was applied."""


@dataclass(frozen=True, slots=True)
class MigrationReport:
    applied: list[str]
    latest: str


def migration_versions(migrations_dir: Path) -> list[str]:
    """The versions (file stems) in the folder, in the order they apply."""
    versions = sorted(path.stem for path in migrations_dir.glob("*.sql"))
    if not versions:
        raise MigrationsMissing(f"no migrations (*.sql) in {migrations_dir}")
    return versions


def applied_versions(repository: Repository) -> set[str]:
    """The versions recorded in `schema_migrations` (none before the first run)."""
    if not repository.run("SELECT to_regclass('schema_migrations') IS NOT NULL")[0][0]:
        return set()
    return {row[0] for row in repository.run("SELECT version FROM schema_migrations")}


def apply_migrations(
    repository: Repository,
    migrations_dir: Path,
    wait_seconds: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> MigrationReport:
    """Apply the new migrations, waiting up to `wait_seconds` for the database to answer."""
    versions = migration_versions(migrations_dir)
    started = monotonic()
    delay = 2.0
    pending: list[str] = versions
    while True:
        try:
            done = applied_versions(repository)
            pending = [version for version in versions if version not in done]
            applied = repository.migrate(migrations_dir)
        except TransientDatabaseError:
            if monotonic() - started + delay > wait_seconds:
                raise
            sleep(delay)
            delay = min(delay * 2, 30.0)
            continue
        except DatabaseError as error:
            raise MigrationFailed(
                f"migration refused ({', '.join(pending) or 'none pending'}): {_describe(error)}"
            ) from error
        return MigrationReport(applied=applied, latest=versions[-1])


def _describe(error: DatabaseError) -> str:
    """PostgreSQL's message and SQLSTATE (pg8000 carries the server's fields in a dict)."""
    fields = error.args[0] if error.args and isinstance(error.args[0], dict) else None
    if fields is None:
        return str(error)
    where = f" at position {fields['P']}" if "P" in fields else ""
    return f"{fields.get('M', 'error')}{where} (SQLSTATE {fields.get('C', '?')})"
