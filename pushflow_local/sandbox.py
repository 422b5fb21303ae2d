"""A function's invocation stopped at its Timeout, as Lambda stops its sandbox.

Lambda does not ask a function to finish: at the deadline the sandbox is
frozen wherever the code is, and the invoke answers `Sandbox.Timedout`. Here
the handler runs on a worker thread; at the deadline an exception is raised
inside that thread (CPython's `PyThreadState_SetAsyncExc`), again every few
milliseconds until the thread has ended, so a handler that catches it, or
does more work in a `finally`, still stops. The exception derives from
BaseException so the `except Exception` of handler code does not swallow it.

CPython delivers it between bytecodes: a thread blocked inside one C call
(a socket read, `time.sleep`) stops when that call returns. The caller gets
the timeout at the deadline either way; a reaper keeps stopping the thread.
"""

from __future__ import annotations

import contextvars
import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

Result = TypeVar("Result")

# How often the stop is raised again while the thread has not ended, and how
# long the caller waits for it before answering without it.
_RETRY_SECONDS = 0.005
_GRACE_SECONDS = 0.5


class SandboxStopped(BaseException):
    """Raised inside the handler's thread at its deadline: its sandbox is gone."""


class SandboxTimedOut(Exception):
    """The invocation overran its Timeout; Lambda answers errorType Sandbox.Timedout."""

    error_type = "Sandbox.Timedout"

    def __init__(self, request_id: str, timeout_seconds: float) -> None:
        self.request_id = request_id
        self.timeout_seconds = timeout_seconds
        # The message Lambda's invoke answer carries for a timeout.
        super().__init__(
            f"RequestId: {request_id} Error: Task timed out after {timeout_seconds:.2f} seconds"
        )


def _raise_in(thread: threading.Thread) -> None:
    if thread.ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(SandboxStopped)
    )


def _stop(thread: threading.Thread, grace: float) -> None:
    """Raise SandboxStopped in `thread` until it ends, waiting at most `grace` here."""
    give_up = time.monotonic() + grace
    while thread.is_alive() and time.monotonic() < give_up:
        _raise_in(thread)
        thread.join(_RETRY_SECONDS)
    if thread.is_alive():
        reaper = threading.Thread(
            target=_stop, args=(thread, float("inf")), name=f"{thread.name}-reaper", daemon=True
        )
        reaper.start()


def run_until(
    call: Callable[[], Result], timeout_seconds: float, request_id: str, name: str = "sandbox"
) -> Result:
    """`call()` on a worker thread; its result or exception, or SandboxTimedOut once
    `timeout_seconds` have passed, with the worker stopped."""
    outcome: dict[str, Any] = {}
    # The handler continues the invoker's context (its context variables), as a
    # call on the invoker's own thread would.
    invoker_context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome["result"] = invoker_context.run(call)
        except SandboxStopped:
            pass
        except BaseException as error:
            outcome["error"] = error

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(timeout_seconds)
    if worker.is_alive():
        _stop(worker, _GRACE_SECONDS)
        raise SandboxTimedOut(request_id, timeout_seconds)
    if "error" in outcome:
        raise outcome["error"]
    if "result" not in outcome:  # stopped at the very deadline, after join gave up
        raise SandboxTimedOut(request_id, timeout_seconds)
    result: Result = outcome["result"]
    return result
