"""The token lifecycle's changes to `devices`, in PostgreSQL (through the Repository).

Each change carries the time SNS saw the event; a device registered after
that (`last_seen_at`, which registration refreshes) is left alone, so a late
or replayed event never disables a token the app has just confirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pushflow.adapters.postgres import Repository
from pushflow.domain.token_lifecycle import Disable, Remove


class DeviceLifecycleStore:
    def __init__(self, repository: Repository) -> None:
        self._repository = repository

    def disable_devices(self, changes: Sequence[Disable]) -> int:
        rows = self._repository.run(
            "UPDATE devices d SET enabled = false, disabled_at = e.at, disabled_reason = e.reason"
            " FROM unnest(CAST(:arns AS text[]), CAST(:reasons AS text[]),"
            "  CAST(CAST(:ats AS text[]) AS timestamptz[])) AS e(arn, reason, at)"
            " WHERE d.endpoint_arn = e.arn AND d.enabled AND d.last_seen_at < e.at"
            " RETURNING d.id",
            arns=[change.endpoint_arn for change in changes],
            reasons=[change.reason for change in changes],
            ats=[change.occurred_at.isoformat() for change in changes],
        )
        return len(rows)

    def remove_devices(self, changes: Sequence[Remove]) -> int:
        rows = self._repository.run(
            "DELETE FROM devices d"
            " USING unnest(CAST(:arns AS text[]), CAST(CAST(:ats AS text[]) AS timestamptz[]))"
            "  AS e(arn, at)"
            " WHERE d.endpoint_arn = e.arn AND d.last_seen_at < e.at"
            " RETURNING d.id",
            arns=[change.endpoint_arn for change in changes],
            ats=[change.occurred_at.isoformat() for change in changes],
        )
        return len(rows)

    def remove_disabled_before(self, cutoff: datetime, limit: int) -> list[str]:
        # SKIP LOCKED: two sweeps at once (a retry overlapping a run) take different rows.
        rows = self._repository.run(
            "DELETE FROM devices WHERE id IN ("
            " SELECT id FROM devices WHERE NOT enabled AND disabled_at < :cutoff"
            " LIMIT :limit FOR UPDATE SKIP LOCKED)"
            " RETURNING endpoint_arn",
            cutoff=cutoff,
            limit=limit,
        )
        return [str(row[0]) for row in rows]
