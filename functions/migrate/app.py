"""MigrateFunction: the DatabaseSchema custom resource - migrations on create and update.

The SQL ships in this function's package: `migrations` here is a symlink to
the repository's `migrations/`, and `sam build` copies the files it points to.
A new migration therefore changes the code, publishes a new function version,
and the version (a property of DatabaseSchema) makes CloudFormation send an
Update. Only migrations not yet recorded in `schema_migrations` run; a failing
one rolls back the run and fails the deploy with PostgreSQL's message.
Delete leaves the schema alone: the data outlives the stack resource.
"""

from __future__ import annotations

from pathlib import Path

from pushflow.adapters.schema import apply_migrations
from pushflow.custom_resource import CustomResourceRequest, CustomResourceResult, custom_resource
from pushflow.services import Services

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SCHEMA_ID = "pushflow-database-schema"


def apply_schema(
    request: CustomResourceRequest, services: Services, migrations_dir: Path = MIGRATIONS_DIR
) -> CustomResourceResult:
    if request.request_type == "Delete":
        return CustomResourceResult(request.physical_resource_id or SCHEMA_ID)
    report = apply_migrations(services.schema_repository, migrations_dir)
    return CustomResourceResult(
        SCHEMA_ID,
        {"Applied": ",".join(report.applied) or "none", "Version": report.latest},
    )


lambda_handler = custom_resource(apply_schema)
