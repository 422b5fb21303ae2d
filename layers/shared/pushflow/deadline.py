"""How long the running invocation has left before Lambda stops it.

Lambda stops a function at its Timeout wherever it is (`Sandbox.Timedout`);
work that can be cut short (a sweep, a page's publishing) asks its deadline
how much time is left and stops taking new work in time to answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Deadline:
    """The invocation's remaining time, read from Lambda's context when asked."""

    _remaining_millis: Callable[[], int] | None = None

    @classmethod
    def of(cls, context: Any) -> Deadline:
        """The deadline of a Lambda context; none when the context cannot tell (a test's)."""
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        return cls(remaining) if callable(remaining) else cls()

    def seconds_left(self) -> float:
        """Seconds until Lambda stops the function; infinite outside Lambda."""
        if self._remaining_millis is None:
            return math.inf
        return max(0, self._remaining_millis()) / 1000


NO_DEADLINE = Deadline()
