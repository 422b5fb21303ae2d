"""The DatabaseSchema custom resource: MigrateFunction against a real, fresh PostgreSQL.

Each test gets its own empty database on the session's server, runs the real
handler with a sample CloudFormation event (events/migrate_*.json) and reads
what CloudFormation would receive at the response URL, and the schema.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest

from pushflow.adapters.postgres import Repository
from pushflow.config import Settings
from pushflow.custom_resource import (
    MAX_REASON_CHARS,
    CustomResourceHandler,
    CustomResourceRequest,
    CustomResourceResult,
)
from pushflow.handler import replace_services
from pushflow.services import Services
from pushflow_local.runtime import MIGRATIONS_DIR, LocalRuntime
from tests.integration.custom_resources import AnswerInbox, context, request_event

pytestmark = [
    pytest.mark.integration,
    # A custom resource publishes no metric of its own.
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

SHIPPED = sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))


@pytest.fixture
def answers() -> Iterator[AnswerInbox]:
    with AnswerInbox() as inbox:
        yield inbox


@pytest.fixture
def fresh_database(runtime: LocalRuntime) -> Iterator[Services]:
    """An empty database on the session's server, as the process's adapters."""
    name = f"schema_{uuid.uuid4().hex[:12]}"
    assert runtime.servers is not None
    admin = runtime.services.repository
    admin.run(f"CREATE DATABASE {name}")
    url = urlunparse(urlparse(runtime.servers.database_url)._replace(path=f"/{name}"))
    services = Services(Settings.from_env({**os.environ, "DATABASE_URL": url}))
    previous = replace_services(services)
    try:
        yield services
    finally:
        replace_services(previous)
        services.close()
        admin.run(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def migrate_module(runtime: LocalRuntime) -> Any:
    function = runtime.functions["MigrateFunction"]
    function.handler()  # loads functions/migrate/app.py as Lambda would
    return function._module


def tables(repository: Repository) -> set[str]:
    rows = repository.run(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return {row[0] for row in rows}


def recorded(repository: Repository) -> list[str]:
    return [row[0] for row in repository.run("SELECT version FROM schema_migrations ORDER BY 1")]


def run(handler: Any, event: dict[str, Any], seconds: float = 60.0) -> Any:
    return handler(event, context("MigrateFunction", seconds))


def test_create_applies_every_shipped_migration(
    runtime: LocalRuntime, fresh_database: Services, answers: AnswerInbox
) -> None:
    # WHEN CloudFormation creates DatabaseSchema
    run(
        runtime.functions["MigrateFunction"].handler(),
        request_event("migrate_create.json", answers.url),
    )

    # THEN it answers SUCCESS with the schema's id and what it applied
    answer = answers.only_answer()
    assert answer["Status"] == "SUCCESS"
    assert answer["PhysicalResourceId"] == "pushflow-database-schema"
    assert answer["Data"] == {"Applied": ",".join(SHIPPED), "Version": SHIPPED[-1]}
    assert answer["LogicalResourceId"] == "DatabaseSchema"
    # AND the database has the schema
    repository = fresh_database.repository
    assert recorded(repository) == SHIPPED
    assert {"users", "devices", "notifications", "deliveries"} <= tables(repository)
    # AND the answer went out as S3's presigned PUT expects it: no content type
    assert answers.headers[0].get("Content-Type", "") == ""


def test_update_applies_only_the_new_migrations(
    fresh_database: Services, answers: AnswerInbox, migrate_module: Any, tmp_path: Path
) -> None:
    # GIVEN a database migrated by the stack's creation
    run(migrate_module.lambda_handler, request_event("migrate_create.json", answers.url))
    # AND a release that adds one migration
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "9001_device_labels.sql").write_text("ALTER TABLE devices ADD COLUMN label text;\n")
    handler = CustomResourceHandler(
        functools.partial(migrate_module.apply_schema, migrations_dir=tmp_path)
    )

    # WHEN CloudFormation updates DatabaseSchema (the function's version changed)
    run(handler, request_event("migrate_update.json", answers.url))

    # THEN only the new migration ran, and the resource keeps its id (no replacement)
    answer = answers.answers[-1]
    assert answer["Status"] == "SUCCESS"
    assert answer["PhysicalResourceId"] == "pushflow-database-schema"
    assert answer["Data"] == {"Applied": "9001_device_labels", "Version": "9001_device_labels"}
    assert recorded(fresh_database.repository) == [*SHIPPED, "9001_device_labels"]

    # AND an update with nothing new applies nothing
    run(handler, request_event("migrate_update.json", answers.url))
    assert answers.answers[-1]["Data"]["Applied"] == "none"


def test_a_failing_migration_fails_the_deploy_and_changes_nothing(
    fresh_database: Services, answers: AnswerInbox, migrate_module: Any, tmp_path: Path
) -> None:
    # GIVEN a migrated database and a release whose new migration breaks halfway
    run(migrate_module.lambda_handler, request_event("migrate_create.json", answers.url))
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "9001_labels.sql").write_text("ALTER TABLE devices ADD COLUMN label text;\n")
    (tmp_path / "9002_broken.sql").write_text("UPDATE no_such_table SET x = 1;\n")
    handler = CustomResourceHandler(
        functools.partial(migrate_module.apply_schema, migrations_dir=tmp_path)
    )

    # WHEN CloudFormation updates DatabaseSchema
    result = run(handler, request_event("migrate_update.json", answers.url))

    # THEN the deploy fails with PostgreSQL's reason and the migrations that were pending
    answer = answers.answers[-1]
    assert answer["Status"] == "FAILED"
    assert result == {"Status": "FAILED"}
    assert "MigrationFailed" in answer["Reason"]
    assert "9001_labels, 9002_broken" in answer["Reason"]
    assert "no_such_table" in answer["Reason"]
    assert "SQLSTATE 42P01" in answer["Reason"]
    # AND nothing of the run stayed: not the good migration before the broken one either
    repository = fresh_database.repository
    assert recorded(repository) == SHIPPED
    columns = repository.run(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'devices'"
    )
    assert "label" not in {row[0] for row in columns}


def test_delete_keeps_the_data(
    fresh_database: Services, answers: AnswerInbox, migrate_module: Any
) -> None:
    run(migrate_module.lambda_handler, request_event("migrate_create.json", answers.url))
    run(migrate_module.lambda_handler, request_event("migrate_delete.json", answers.url))
    answer = answers.answers[-1]
    assert (answer["Status"], answer["PhysicalResourceId"]) == (
        "SUCCESS",
        "pushflow-database-schema",
    )
    assert "devices" in tables(fresh_database.repository)


def test_a_package_without_migrations_fails_instead_of_deploying_an_old_schema(
    fresh_database: Services, answers: AnswerInbox, migrate_module: Any, tmp_path: Path
) -> None:
    handler = CustomResourceHandler(
        functools.partial(migrate_module.apply_schema, migrations_dir=tmp_path)
    )
    run(handler, request_event("migrate_create.json", answers.url))
    answer = answers.only_answer()
    assert answer["Status"] == "FAILED"
    assert "MigrationsMissing" in answer["Reason"]
    # A failed Create still names a resource, for the rollback's Delete.
    assert answer["PhysicalResourceId"].startswith("failed-")


def test_the_function_ships_the_repository_migrations(migrate_module: Any) -> None:
    assert sorted(p.stem for p in Path(migrate_module.MIGRATIONS_DIR).glob("*.sql")) == SHIPPED


# -- the answer itself --------------------------------------------------------------------


def test_an_answer_goes_out_before_the_deadline_and_only_once(answers: AnswerInbox) -> None:
    def slow(request: CustomResourceRequest, services: Services) -> CustomResourceResult:
        time.sleep(1.5)
        return CustomResourceResult("late")

    handler = CustomResourceHandler(slow, deadline_margin=0.5)
    run(handler, request_event("migrate_create.json", answers.url), seconds=1.0)

    answer = answers.only_answer()
    assert answer["Status"] == "FAILED"
    assert "timed out" in answer["Reason"]


def test_a_long_error_is_cut_to_fit_cloudformation(answers: AnswerInbox) -> None:
    def verbose(request: CustomResourceRequest, services: Services) -> CustomResourceResult:
        raise RuntimeError("x" * 10_000)

    run(CustomResourceHandler(verbose), request_event("migrate_create.json", answers.url))
    answer = answers.only_answer()
    assert len(answer["Reason"]) == MAX_REASON_CHARS
    assert answer["Reason"].startswith("RuntimeError: xxx")


def test_the_answer_is_retried_when_the_response_url_fails(answers: AnswerInbox) -> None:
    answers.failures_to_serve = 1

    def ok(request: CustomResourceRequest, services: Services) -> CustomResourceResult:
        return CustomResourceResult("done", {"Answer": "42"})

    run(CustomResourceHandler(ok), request_event("migrate_delete.json", answers.url))
    assert answers.only_answer()["Data"] == {"Answer": "42"}
