"""The adapters a function uses, built lazily from Settings and reusable.

Tests build a Services with their own settings (or their own adapters);
nothing here connects until an adapter is first asked for.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pushflow.clock import Clock, SystemClock
from pushflow.config import Settings

if TYPE_CHECKING:
    from pushflow.adapters.executions import ExecutionReader, StepFunctionsExecutions
    from pushflow.adapters.page_plans import PagePlanStore
    from pushflow.adapters.postgres import Repository
    from pushflow.adapters.recipient_filter import RecipientFilter
    from pushflow.adapters.redis_store import RecipientStore
    from pushflow.adapters.scheduler import Scheduler
    from pushflow.adapters.sns import EndpointRegistry
    from pushflow.adapters.workflow import Workflow
    from pushflow.domain.publishing import Publisher


class Services:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Services:
        return cls(Settings.from_env())

    def _client(self, service: str) -> Any:
        import boto3

        # Clients are thread-safe; sessions are not, so build under a lock.
        with self._lock:
            session: Any = boto3.session.Session()  # typed Any: boto3-stubs overloads per name
            return session.client(service)

    @cached_property
    def schema_repository(self) -> Repository:
        """What MigrateFunction migrates with: it brings the schema, so it checks none."""
        from pushflow.adapters.postgres import Repository

        return Repository.from_settings(self.settings)

    @cached_property
    def repository(self) -> Repository:
        """Deployed, it refuses a schema older than the code (`sam sync` skips the
        migrations); locally the runtime applies them at start."""
        from pushflow.adapters.postgres import SCHEMA_VERSION, Repository

        deployed = not self.settings.database_url
        return Repository.from_settings(
            self.settings, expected_schema=SCHEMA_VERSION if deployed else None
        )

    @cached_property
    def store(self) -> RecipientStore:
        from pushflow.adapters.redis_store import RecipientStore

        return RecipientStore.from_url(self.settings.redis_url)

    @cached_property
    def recipient_filter(self) -> RecipientFilter:
        from pushflow.adapters.recipient_filter import RecipientFilter

        return RecipientFilter(
            self.store.client,
            self.repository.load_preferences,
            load_cap_history=self.repository.cap_history,
        )

    @cached_property
    def publisher(self) -> Publisher:
        """Signed Publish requests over kept-alive sockets (a fraction of boto3's CPU per
        push), deployed and in local mode alike (there, to the SNS stand-in)."""
        from pushflow.adapters.sns_http import SnsHttpPublisher

        return SnsHttpPublisher(
            self.settings.sns_publish_endpoint_url,
            concurrency=self.settings.publish_concurrency,
        )

    @cached_property
    def endpoints(self) -> EndpointRegistry:
        from pushflow.adapters.sns import EndpointRegistry

        return EndpointRegistry(self._client("sns"))

    @cached_property
    def scheduler(self) -> Scheduler:
        from pushflow.adapters.scheduler import Scheduler

        settings = self.settings
        return Scheduler(
            self._client("scheduler"),
            group=settings.require("schedule_group"),
            role_arn=settings.require("scheduler_role_arn"),
            state_machine_arn=settings.require("state_machine_arn"),
            dead_letter_arn=settings.schedule_dlq_arn,
        )

    @cached_property
    def page_plans(self) -> PagePlanStore:
        from pushflow.adapters.page_plans import PagePlanStore

        return PagePlanStore(self._client("s3"), self.settings.require("page_plan_bucket"))

    @cached_property
    def workflow(self) -> Workflow:
        from pushflow.adapters.workflow import Workflow

        return Workflow(self._client("stepfunctions"), self.settings.require("state_machine_arn"))

    @cached_property
    def executions(self) -> StepFunctionsExecutions:
        from pushflow.adapters.executions import StepFunctionsExecutions

        return StepFunctionsExecutions(
            self._client("stepfunctions"), self.settings.require("state_machine_arn")
        )

    @cached_property
    def execution_reader(self) -> ExecutionReader:
        from pushflow.adapters.executions import ExecutionReader

        return ExecutionReader(self._client("stepfunctions"))

    def close(self) -> None:
        if "schema_repository" in self.__dict__:
            self.schema_repository.close()
        if "repository" in self.__dict__:
            self.repository.close()
        if "store" in self.__dict__:
            self.store.close()
        if "publisher" in self.__dict__:
            close = getattr(self.publisher, "close", None)
            if close is not None:
                close()
