"""Deployed functions refuse a database whose schema is older than their code.

`sam sync` updates function code without running DatabaseSchema (the custom
resource that applies migrations): the code then meets an old schema. A
deployed repository checks the schema version on first use and fails with
SchemaBehind, naming both versions; MigrateFunction's repository does not.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest

from pushflow.adapters.postgres import SCHEMA_VERSION, ConnectionParams, Repository, SchemaBehind
from pushflow.config import Settings
from pushflow.services import Services
from pushflow_local.runtime import MIGRATIONS_DIR, LocalRuntime

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_database(runtime: LocalRuntime) -> Iterator[ConnectionParams]:
    name = f"schema_check_{uuid.uuid4().hex[:12]}"
    assert runtime.servers is not None
    admin = runtime.services.repository
    admin.run(f"CREATE DATABASE {name}")
    url = urlunparse(urlparse(runtime.servers.database_url)._replace(path=f"/{name}"))
    try:
        yield ConnectionParams.from_url(url)
    finally:
        admin.run(f"DROP DATABASE {name} WITH (FORCE)")


def test_the_code_expects_the_newest_migration_it_ships() -> None:
    newest = max(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))
    assert newest == SCHEMA_VERSION, (
        f"migrations/ ends at {newest}: set SCHEMA_VERSION in pushflow/adapters/postgres.py to it"
    )


def test_code_meeting_a_schema_without_its_newest_migration_fails_by_name(
    empty_database: ConnectionParams, tmp_path: Path
) -> None:
    # GIVEN a database migrated to all but the newest migration (a sync skipped it)
    older = tmp_path / "migrations"
    older.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql"))[:-1]:
        shutil.copy(path, older / path.name)
    migrator = Repository(empty_database.connect)
    migrator.migrate(older)
    checked = Repository(empty_database.connect, expected_schema=SCHEMA_VERSION)
    try:
        # WHEN the new code first uses it THEN it fails, naming what is missing
        with pytest.raises(SchemaBehind, match=SCHEMA_VERSION) as raised:
            checked.run("SELECT 1")
        assert max(p.stem for p in older.glob("*.sql")) in str(raised.value)
        # AND once the migration has run, the same process goes on
        migrator.migrate(MIGRATIONS_DIR)
        assert checked.run("SELECT 1") == [[1]]
    finally:
        migrator.close()
        checked.close()


def test_an_empty_database_is_behind_too(empty_database: ConnectionParams) -> None:
    checked = Repository(empty_database.connect, expected_schema=SCHEMA_VERSION)
    try:
        with pytest.raises(SchemaBehind, match="no migration"):
            checked.run("SELECT 1")
    finally:
        checked.close()


def test_deployed_functions_check_the_schema_and_the_migrator_does_not(
    runtime: LocalRuntime,
) -> None:
    # GIVEN a deployed function's settings: a host and the credentials' secret
    secret = runtime.client("secretsmanager").create_secret(
        Name=f"db-{uuid.uuid4()}", SecretString=json.dumps({"username": "u", "password": "p"})
    )["ARN"]
    environment = {
        "DATABASE_HOST": "proxy.example.internal",
        "DATABASE_SECRET_ARN": secret,
        "POWERTOOLS_SERVICE_NAME": os.environ.get("POWERTOOLS_SERVICE_NAME", "pushflow"),
    }
    services = Services(Settings.from_env(environment))
    # THEN the functions' repository checks, the one MigrateFunction migrates with does not
    assert services.repository.expected_schema == SCHEMA_VERSION
    assert services.schema_repository.expected_schema is None
    # AND locally (DATABASE_URL) the runtime applies the migrations itself: no check
    assert runtime.services.repository.expected_schema is None
