"""The page plan in S3: one (empty) object per page, read by the Distributed Map.

The page's bounds are in its key, so the Map's ItemReader lists the plan's
prefix and each child execution knows its page from the key alone. Nothing
that grows with the audience passes through the parent execution's state.
(A single JSON file would need `ReaderConfig.InputType`, which statelint
does not accept yet.)
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pushflow.domain.models import PageRef

_WRITERS = 32


class PagePlanStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    def write(self, notification_id: str, run: str, pages: Sequence[PageRef]) -> dict[str, str]:
        prefix = f"plans/{notification_id}/{run}/"

        def put(page: PageRef) -> None:
            self._client.put_object(Bucket=self.bucket, Key=prefix + page.key(), Body=b"")

        with ThreadPoolExecutor(min(_WRITERS, max(1, len(pages)))) as pool:
            list(pool.map(put, pages))
        return {"bucket": self.bucket, "prefix": prefix}
