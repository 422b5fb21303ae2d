"""Faults injected into a running send, each at a known point of the real code path.

Every fault is a context manager that patches one instance the local runtime
uses (never a class, so nothing leaks past the `with`) and counts how often it
fired in `injected`. Where the fault is a driver failure it is the driver's own
error (redis-py's ConnectionError, a PostgreSQL backend really terminated,
the SNS stand-in's error answers), so the adapters' error mapping is
exercised too.

Which Lambda function (and which page) a thread is running is known from
`track_functions`, which wraps each local function's `invoke`: a fault can be
limited to "during ResolveRecipients", "page 1 only", and so on.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from pushflow.adapters.postgres import ConnectionParams
from pushflow.domain.models import PageRef
from pushflow.domain.publishing import EarlyOutcomes, PublishOutcome, PushMessage
from pushflow_local import sns
from pushflow_local.runtime import LocalRuntime

# -- which function and page this thread is running -------------------------------------


@dataclass(frozen=True, eq=False)  # one object per call: a retry is another invocation
class Invocation:
    function: str  # the template's logical id, e.g. "PublishBatchFunction"
    page: int | None  # the page number of a Map iteration's event


# A context variable, not a thread-local: the local runtime runs each handler on
# its own thread (stopped at its Timeout) in a copy of the invoking context.
_current: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "reliability_invocation", default=None
)


def current_invocation() -> Invocation | None:
    return _current.get()


def _page_of(event: Any) -> int | None:
    """The page a Map iteration's task works on (resolved, or still its plan's S3 key)."""
    if not isinstance(event, Mapping) or not ("page" in event or "page_key" in event):
        return None
    try:
        return int(PageRef.from_event(event).number)
    except (KeyError, TypeError, ValueError):
        return None


@contextlib.contextmanager
def _running(function: str, event: Any) -> Iterator[None]:
    token = _current.set(Invocation(function, _page_of(event)))
    try:
        yield
    finally:
        _current.reset(token)


@contextlib.contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    """Set an attribute on one instance; restore exactly what was there afterwards."""
    own = vars(target)
    had, previous = name in own, own.get(name)
    setattr(target, name, value)
    try:
        yield
    finally:
        if had:
            setattr(target, name, previous)
        else:
            delattr(target, name)


@contextlib.contextmanager
def track_functions(runtime: LocalRuntime) -> Iterator[None]:
    """Record, per thread, which function and page the local runtime is running."""
    with contextlib.ExitStack() as stack:
        for logical_id, function in runtime.functions.items():
            original = function.invoke

            def invoke(event: Any, _original: Any = original, _id: str = logical_id) -> Any:
                with _running(_id, event):
                    return _original(event)

            stack.enter_context(patched(function, "invoke", invoke))
        yield


# -- when a fault fires ------------------------------------------------------------------


class Trigger:
    """Decides, thread-safely, whether this opportunity fires the fault.

    `functions`: only while one of these functions runs; `pages`: only on these
    pages; `skip`: let this many matching opportunities pass first; `limit`:
    fire at most this many times (None: always); `once_per_page`: at most once
    per page (its retry then succeeds); `seconds`: once fired, keep firing for
    this long (an outage measured in time rather than in calls);
    `rest_of_invocation`: once fired, keep firing until that function call ends
    (a server gone for the rest of it, however many calls it makes), counted once.
    """

    def __init__(
        self,
        functions: Sequence[str] = (),
        pages: Sequence[int] | None = None,
        skip: int = 0,
        limit: int | None = None,
        once_per_page: bool = False,
        seconds: float | None = None,
        rest_of_invocation: bool = False,
    ) -> None:
        self.functions = frozenset(functions)
        self.rest_of_invocation = rest_of_invocation
        self._invocations_hit: set[Invocation] = set()
        self.pages = None if pages is None else frozenset(pages)
        self.skip = skip
        self.limit = limit
        self.once_per_page = once_per_page
        self.seconds = seconds
        self.fired = 0
        self._seen = 0
        self.pages_fired: set[int | None] = set()
        self._since: float | None = None
        self._lock = threading.Lock()

    def fire(self) -> bool:
        invocation = current_invocation()
        if self.functions and (invocation is None or invocation.function not in self.functions):
            return False
        page = invocation.page if invocation else None
        if self.pages is not None and page not in self.pages:
            return False
        with self._lock:
            if invocation is not None and invocation in self._invocations_hit:
                return True
            if self.seconds is not None and self._since is not None:
                if time.monotonic() - self._since > self.seconds:
                    return False
                self.fired += 1
                return True
            self._seen += 1
            if self._seen <= self.skip:
                return False
            if self.limit is not None and self.fired >= self.limit:
                return False
            if self.once_per_page and page in self.pages_fired:
                return False
            self.pages_fired.add(page)
            self.fired += 1
            if self.rest_of_invocation and invocation is not None:
                self._invocations_hit.add(invocation)
            if self.seconds is not None:
                self._since = time.monotonic()
            return True


class Fault:
    """A named fault with a trigger; `injected` says how often it actually fired."""

    name = "fault"

    def __init__(self, trigger: Trigger) -> None:
        self.trigger = trigger

    @property
    def injected(self) -> int:
        return self.trigger.fired

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def active(self, runtime: LocalRuntime) -> Iterator[Fault]:
        with contextlib.ExitStack() as stack:
            self.install(runtime, stack)
            yield self


def error_named(name: str, base: type[Exception] = Exception) -> type[Exception]:
    """An exception class with any name: the local runtime reports errors to the ASL by
    class name, so `Lambda.Unknown` (a timeout or crash of the function) can be posed."""
    return type(name, (base,), {})


# -- Redis -------------------------------------------------------------------------------


class RedisUnavailable(Fault):
    """Redis refuses connections: every command, pipeline and script fails.

    Raised where the client hands back what the server did: redis-py's
    ConnectionError from the store's client, as a standalone client raises it
    on connection refused and as the cluster client raises it once its own
    retries and topology refresh gave up (for either client, at the instance:
    `execute_command` carries every command and script, `pipeline()` every
    pipeline, the cluster client's per-slot MGET included). `during` names
    methods of the publish-marker store (`claim`, `settle`): the outage then
    hits only while one of them runs, a point in the send's timeline.
    """

    def __init__(
        self, trigger: Trigger, during: Sequence[str] = (), read_only: bool = False
    ) -> None:
        super().__init__(trigger)
        self.during = tuple(during)
        self.read_only = read_only
        what = "redis READONLY (a demoted primary)" if read_only else "redis unavailable"
        self.name = what + (f" (during {', '.join(self.during)})" if during else "")

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        store = runtime.services.store
        client: Any = store.client  # a standalone or a cluster client (the latter untyped)
        inside = threading.local()
        for method in self.during:
            stack.enter_context(patched(store, method, _marking(getattr(store, method), inside)))

        def refuse() -> None:
            if (not self.during or getattr(inside, "active", False)) and self.trigger.fire():
                if self.read_only:
                    raise redis.exceptions.ReadOnlyError(
                        "You can't write against a read only replica."
                    )
                raise redis.exceptions.ConnectionError(
                    "Error 111 connecting to redis: Connection refused."
                )

        execute_command = client.execute_command
        pipeline = client.pipeline

        def refusing_execute_command(*args: Any, **kwargs: Any) -> Any:
            refuse()
            return execute_command(*args, **kwargs)

        def refusing_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe: Any = pipeline(*args, **kwargs)
            execute = pipe.execute

            def refusing_execute(*args: Any, **kwargs: Any) -> Any:
                refuse()
                return execute(*args, **kwargs)

            pipe.execute = refusing_execute
            return pipe

        stack.enter_context(patched(client, "execute_command", refusing_execute_command))
        stack.enter_context(patched(client, "pipeline", refusing_pipeline))


def _marking(method: Callable[..., Any], flag: threading.local) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        flag.active = True
        try:
            return method(*args, **kwargs)
        finally:
            flag.active = False

    return call


# -- PostgreSQL ----------------------------------------------------------------------------


class BackendKiller:
    """Terminates PostgreSQL backends from a connection of its own (pg_terminate_backend)."""

    def __init__(self, database_url: str) -> None:
        self._params = ConnectionParams.from_url(database_url)
        self._conn: Any = None
        self._lock = threading.Lock()

    def terminate(self, pid: int) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = self._params.connect()
            # Wait (up to 5 s) until the backend is really gone: the victim's next
            # statement then meets a dead connection, not a race.
            self._conn.run("SELECT pg_terminate_backend(:pid, 5000)", pid=pid)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


def _backend_pid(conn: Any) -> int:
    return int(conn.run("SELECT pg_backend_pid()")[0][0])


class PostgresConnectionDropped(Fault):
    """The server terminates the connection a function is using.

    `at="checkout"`: right after the pool hands the connection out, so the
    function's next statement fails (a failover or an idle-connection reaper);
    `at="commit"`: inside a transaction whose statements all ran, just before
    COMMIT, so the whole transaction is rolled back by the server.
    """

    def __init__(self, trigger: Trigger, at: str = "checkout") -> None:
        super().__init__(trigger)
        if at not in ("checkout", "commit"):
            raise ValueError("at must be 'checkout' or 'commit'")
        self.at = at
        self.name = f"postgres connection dropped ({at})"

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        assert runtime.servers is not None
        killer = BackendKiller(runtime.servers.database_url)
        stack.callback(killer.close)
        repository = runtime.services.repository
        if self.at == "checkout":
            # The pool's lowest level: every statement and transaction checks out here.
            original_session = repository._session

            @contextlib.contextmanager
            def session() -> Iterator[Any]:
                with original_session() as conn:
                    if self.trigger.fire():
                        killer.terminate(_backend_pid(conn))
                    yield conn

            stack.enter_context(patched(repository, "_session", session))
        else:
            original_transaction = repository.transaction

            @contextlib.contextmanager
            def transaction() -> Iterator[Any]:
                with original_transaction() as conn:
                    yield conn
                    if self.trigger.fire():
                        killer.terminate(_backend_pid(conn))

            stack.enter_context(patched(repository, "transaction", transaction))


# -- SNS -------------------------------------------------------------------------------------

THROTTLING = "Throttling"  # the query protocol's common code, HTTP 400
THROTTLED = "Throttled"  # the SNS model's, HTTP 429
INTERNAL_ERROR = "InternalError"
SERVICE_UNAVAILABLE = "ServiceUnavailable"


class SnsBursts(Fault):
    """SNS answers bursts of Publish calls with throttling and 5xx errors.

    Publishes are numbered as they reach the SNS stand-in; publish n is refused
    when it falls in one of `bursts` windows of `burst_length`, one window every
    `every` publishes, the windows cycling through `errors`. The stand-in answers
    as SNS does (its codes and statuses), so the publisher's classification runs;
    nothing refused is delivered.
    """

    name = "sns throttling and 5xx bursts"

    def __init__(
        self,
        bursts: int,
        burst_length: int,
        every: int,
        errors: Sequence[str] = (THROTTLING, THROTTLED, INTERNAL_ERROR, SERVICE_UNAVAILABLE),
    ) -> None:
        super().__init__(Trigger())
        self.bursts = bursts
        self.burst_length = burst_length
        self.every = every
        self.errors = list(errors)
        self._answers: list[sns.Fault] = []

    @property
    def injected(self) -> int:
        return sum(answer.fired for answer in self._answers)

    def fired_for(self, *codes: str) -> int:
        """How many Publishes were answered with one of `codes`."""
        return sum(answer.fired for answer in self._answers if answer.code in codes)

    def _code_of(self, number: int) -> str | None:
        window, position = divmod(number, self.every)
        if window >= self.bursts or position >= self.burst_length:
            return None
        return self.errors[window % len(self.errors)]

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        server = runtime.sns
        assert server is not None, "the local runtime runs the SNS stand-in"
        first = server.publishes
        self._answers = [
            sns.Fault(
                sns.ANSWER_ERROR,
                code,
                when=lambda number, code=code: self._code_of(number - first) == code,  # type: ignore[misc]
            )
            for code in dict.fromkeys(self.errors)
        ]
        stack.enter_context(server.faulty(*self._answers))


# -- crashes -------------------------------------------------------------------------------------


class CrashAfterReturn(Fault):
    """A function does its work, then dies before Step Functions gets its answer.

    The error reaches the ASL under `error` as its name: `Lambda.ServiceException`
    is retried by every task; `Lambda.Unknown` (how a function timeout or crash is
    reported) is not, and goes to the Catch.
    """

    def __init__(self, trigger: Trigger, function: str, error: str) -> None:
        super().__init__(trigger)
        self.function = function
        self.error = error
        self.name = f"{function} dies after its work ({error})"

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        function = runtime.functions[self.function]
        original = function.invoke
        crash = error_named(self.error)

        def invoke(event: Any) -> Any:
            result = original(event)
            with _running(self.function, event):
                crashed = self.trigger.fire()
            if crashed:
                raise crash("the function stopped after its work, before answering")
            return result

        stack.enter_context(patched(function, "invoke", invoke))


class Slow(Fault):
    """A function takes `seconds` longer before it starts its work (a cold start, a
    slow dependency): it widens the windows between the states of a send."""

    def __init__(self, trigger: Trigger, function: str, seconds: float) -> None:
        super().__init__(trigger)
        self.function = function
        self.seconds = seconds
        self.name = f"{function} slowed by {seconds:g}s"

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        function = runtime.functions[self.function]
        original = function.invoke

        def invoke(event: Any) -> Any:
            with _running(self.function, event):
                slow = self.trigger.fire()
            if slow:
                time.sleep(self.seconds)
            return original(event)

        stack.enter_context(patched(function, "invoke", invoke))


class Hold(Fault):
    """Hold a function's invocations for which `when(event)` is true until `release`
    is set (at most `timeout` seconds): puts two sends' states in a chosen order."""

    def __init__(
        self,
        function: str,
        when: Callable[[Mapping[str, Any]], bool],
        release: threading.Event,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(Trigger())
        self.function = function
        self.when = when
        self.release = release
        self.timeout = timeout
        self.name = f"{function} held"

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        function = runtime.functions[self.function]
        original = function.invoke

        def invoke(event: Any) -> Any:
            if isinstance(event, Mapping) and self.when(event):
                with self.trigger._lock:
                    self.trigger.fired += 1
                self.release.wait(self.timeout)
            return original(event)

        stack.enter_context(patched(function, "invoke", invoke))


class CrashWhilePublishing(Fault):
    """PublishBatch dies after SNS accepted the page's pushes, before it settled them."""

    def __init__(self, trigger: Trigger, error: str) -> None:
        super().__init__(trigger)
        self.error = error
        self.name = f"PublishBatch dies mid-publish ({error})"

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        publisher: Any = runtime.services.publisher
        original = publisher.publish
        crash = error_named(self.error)

        def publish(
            pushes: Iterable[PushMessage], early: EarlyOutcomes | None = None
        ) -> list[PublishOutcome]:
            # `early` is not passed on: the function dies before it wrote any outcome.
            outcomes: list[PublishOutcome] = original(pushes)
            if outcomes and self.trigger.fire():
                raise crash("the function stopped while publishing")
            return outcomes

        stack.enter_context(patched(publisher, "publish", publish))


class SnsAcceptsThenFails(Fault):
    """SNS delivers a push and then answers a 5xx or resets the connection (the
    publisher cannot tell whether it went): the first `times` Publishes of the fault."""

    def __init__(self, action: str, times: int) -> None:
        super().__init__(Trigger())
        self.action = action
        self.times = times
        self.name = f"sns accepts, then {action.removeprefix('deliver_then_')}"
        self._answer: sns.Fault | None = None

    @property
    def injected(self) -> int:
        return self._answer.fired if self._answer else 0

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        server = runtime.sns
        assert server is not None, "the local runtime runs the SNS stand-in"
        self._answer = sns.Fault(self.action, "InternalError", times=self.times)
        stack.enter_context(server.faulty(self._answer))


class RedisFlushed(Fault):
    """Redis loses everything it holds (a failover to an empty replica, eviction of
    every key) when one of the trigger's functions starts: caps, dedupe markers and
    cached preferences of every send in flight are gone."""

    name = "redis flushed (all data lost)"

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        client: Any = runtime.services.store.client
        for logical_id in self.trigger.functions:
            function = runtime.functions[logical_id]

            def invoke(event: Any, _original: Any = function.invoke, _id: str = logical_id) -> Any:
                with _running(_id, event):
                    flush = self.trigger.fire()
                if flush:
                    client.flushall()
                return _original(event)

            stack.enter_context(patched(function, "invoke", invoke))


class OutOfTime(Fault):
    """PublishBatch's Timeout is cut to `seconds` (the sandbox stops it there, as
    Lambda does) while SNS answers slowly, one push in flight: each attempt has
    time for part of its page only."""

    def __init__(self, function: str, seconds: float, sns_latency: float) -> None:
        super().__init__(Trigger())
        self.function = function
        self.seconds = seconds
        self.sns_latency = sns_latency
        self.name = f"{function} Timeout {seconds:g}s, SNS answering in {sns_latency:g}s"
        self.attempts = 0

    @property
    def injected(self) -> int:
        return self.attempts

    def install(self, runtime: LocalRuntime, stack: contextlib.ExitStack) -> None:
        server = runtime.sns
        assert server is not None
        latency = sns.Latency(median=self.sns_latency, p99=self.sns_latency * 1.2)
        stack.enter_context(patched(server, "latency", latency))
        stack.enter_context(patched(runtime.services.publisher, "_concurrency", 1))
        stack.enter_context(runtime.function_timeouts({self.function: self.seconds}))
        function = runtime.functions[self.function]
        original = function.invoke

        def invoke(event: Any) -> Any:
            with self.trigger._lock:
                self.attempts += 1
            return original(event)

        stack.enter_context(patched(function, "invoke", invoke))


# -- the runtime's knobs ----------------------------------------------------------------


@contextlib.contextmanager
def retry_sleep_scale(scale: float) -> Iterator[None]:
    """Scale the ASL's Retry intervals for a while (the runtime scales moto's sleeps)."""
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    sleeper = vars(retrier_decl)["time"]
    if not hasattr(sleeper, "scale"):
        raise RuntimeError("the local runtime is not running (moto's retry sleep is unscaled)")
    previous = sleeper.scale
    sleeper.scale = scale
    try:
        yield
    finally:
        sleeper.scale = previous


@contextlib.contextmanager
def settings_changed(runtime: LocalRuntime, **changes: Any) -> Iterator[None]:
    """Change the functions' settings for a while (page size, Map concurrency)."""
    import dataclasses

    services = runtime.services
    with patched(services, "settings", dataclasses.replace(services.settings, **changes)):
        yield


def all_active(runtime: LocalRuntime, faults: Sequence[Fault]) -> contextlib.ExitStack:
    """Enter every fault (and function tracking); close the returned stack to end them."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(track_functions(runtime))
        for fault in faults:
            stack.enter_context(fault.active(runtime))
    except BaseException:
        stack.close()
        raise
    return stack


Injector = Callable[[LocalRuntime], Sequence[Fault]]
