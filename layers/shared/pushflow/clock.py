"""What time it is, as a dependency.

Quiet hours, caps and deferrals depend on "now"; the local runtime replaces
the clock so tests (and local mode's virtual time) can move it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class MovableClock:
    """The system clock plus an offset that only moves forward."""

    def __init__(self) -> None:
        self._offset = timedelta()
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def advance(self, by: timedelta) -> None:
        with self._lock:
            self._offset += max(by, timedelta())

    def advance_to(self, moment: datetime) -> None:
        with self._lock:
            ahead = moment - (datetime.now(UTC) + self._offset)
            if ahead > timedelta():
                self._offset += ahead
