"""FilterRecipients in Redis: opt-outs, quiet hours, frequency caps and dedupe for a page.

A page costs a few round trips whatever its size: one pipelined read of the
page's cached preferences (a miss costs one PostgreSQL query for all missing
users and one pipelined write-back), then one Lua script call that dedupes
devices and counts caps atomically for every user of the page.

Everything of one user lives under the hash tag `{u:<user id>}`, so each
user's keys share a hash slot (ElastiCache Serverless runs in cluster mode):

- `pf:{u:<id>}:prefs`: the cached preferences (compact JSON, with a TTL);
- `pf:{u:<id>}:cap:<category>`: the notification ids that reached the user,
  scored by send time (ms); those older than a rolling 24 hours are trimmed
  when the count would pass the cap, so it stays bounded by the cap;
  adding is idempotent, so a retried page never counts twice;
- `pf:{u:<id>}:seen:<notification id>`: device id -> the page that passed it;
  another page of the same notification finding it is a duplicate.

On a cluster client the script runs once per hash slot, all in one pipeline.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from pushflow.adapters.redis_client import RedisClient, run_script_per_slot, store_errors
from pushflow.domain.categories import Category
from pushflow.domain.models import DeliveryResult, Outcome, Recipient
from pushflow.domain.ports import FilterDecision
from pushflow.domain.rules import DEFAULT_PREFERENCES, Preferences, SendRules, UserRules

QuietHoursMode = Literal["suppress", "defer"]
# (users, category, since) -> per user, the (notification id, when) of that category's
# sends claimed for them since then: PostgreSQL's record, which a cap is rebuilt from.
CapHistory = Callable[[Sequence[int], str, datetime], Mapping[int, Sequence[tuple[str, datetime]]]]
CAP_WINDOW_MS = 24 * 3600 * 1000
# A cap set outlives its newest member by the window (plus slack for clock skew).
CAP_TTL_MS = CAP_WINDOW_MS + 3600 * 1000
# Long enough for every retry and redrive of a send's pages.
SEEN_TTL_SECONDS = 48 * 3600
# After an invalidation, a write-back of preferences read before it must not
# land: a short-lived marker makes the cache miss and refuses those writes.
INVALIDATED = "-"
INVALIDATED_TTL_SECONDS = 30

# The script's answer per device, in the order the devices were passed.
_ELIGIBLE, _DUPLICATE, _CAPPED = 0, 1, 2

# KEYS: per user, its seen hash and its cap set (2 keys per user, one slot per user).
# ARGV: notification id, page, now (ms), cap window (ms), seen TTL (s), cap TTL (ms),
#       then per user: daily cap (-1: uncapped), device count, device ids, then the
#       number of history entries to seed the cap set with and their (notification, ms).
# Returns one code per device: 0 eligible, 1 duplicate, 2 capped.
_DECIDE = """
local notification, page = ARGV[1], ARGV[2]
local now = tonumber(ARGV[3])
local since = now - tonumber(ARGV[4])
local seen_ttl, cap_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}
local a = 7
for u = 1, #KEYS / 2 do
  local seen_key, cap_key = KEYS[2 * u - 1], KEYS[2 * u]
  local cap, count = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local first, passing, marked = #out + 1, 0, false
  for d = a + 2, a + 1 + count do
    local device = ARGV[d]
    if redis.call('HSETNX', seen_key, device, page) == 1 then
      marked = true
      passing = passing + 1
      out[#out + 1] = 0
    elseif redis.call('HGET', seen_key, device) == page then
      -- this very page, retried: not a duplicate
      passing = passing + 1
      out[#out + 1] = 0
    else
      out[#out + 1] = 1
    end
  end
  if marked then
    redis.call('EXPIRE', seen_key, seen_ttl)
  end
  -- The user's history from PostgreSQL when the counter was missing (lost with
  -- Redis's data, or never counted): idempotent, members are notification ids.
  local seeds_at = a + 2 + count
  local seeds = tonumber(ARGV[seeds_at])
  for s = 0, seeds - 1 do
    redis.call('ZADD', cap_key, 'NX', ARGV[seeds_at + 2 + 2 * s], ARGV[seeds_at + 1 + 2 * s])
  end
  if seeds > 0 then
    redis.call('PEXPIRE', cap_key, cap_ttl)
  end
  if cap >= 0 and passing > 0 then
    -- Counted already (a retried page, another page of this send): passes.
    if redis.call('ZADD', cap_key, 'NX', now, notification) == 1 then
      -- Trimmed only when the count may be over the cap (most users are far
      -- below it): the set stays bounded by the cap all the same.
      local over = redis.call('ZCARD', cap_key) > cap
      if over then
        redis.call('ZREMRANGEBYSCORE', cap_key, '-inf', since)
        over = redis.call('ZCARD', cap_key) > cap
      end
      if over then
        redis.call('ZREM', cap_key, notification)
        for i = first, #out do
          if out[i] == 0 then
            out[i] = 2
          end
        end
      else
        redis.call('PEXPIRE', cap_key, cap_ttl)
      end
    end
  end
  a = seeds_at + 1 + 2 * seeds
end
return out
"""


def preferences_key(user_id: int) -> str:
    return f"pf:{{u:{user_id}}}:prefs"


def cap_key(user_id: int, category: str) -> str:
    return f"pf:{{u:{user_id}}}:cap:{category}"


def seen_key(user_id: int, notification_id: str) -> str:
    return f"pf:{{u:{user_id}}}:seen:{notification_id}"


def group_by_slot(user_ids: Iterable[int], keyslot: Callable[[str], int]) -> list[list[int]]:
    """Users whose keys share a hash slot, together; groups in first-seen order."""
    groups: dict[int, list[int]] = {}
    for user_id in user_ids:
        groups.setdefault(keyslot(preferences_key(user_id)), []).append(user_id)
    return list(groups.values())


class RecipientFilter:
    def __init__(
        self,
        client: RedisClient,
        load_preferences: Callable[[Sequence[int]], Mapping[int, Preferences]],
        preferences_ttl_seconds: int = 3600,
        load_cap_history: CapHistory | None = None,
    ) -> None:
        self._redis = client
        self._load_preferences = load_preferences
        self._load_cap_history = load_cap_history
        self._preferences_ttl = preferences_ttl_seconds
        # Hashes the script once; the server learns it on first use (EVAL on NOSCRIPT).
        self._decide = client.register_script(_DECIDE)

    def cap_usage(self, user_id: int, categories: Sequence[str], now: datetime) -> dict[str, int]:
        """Pushes counted against each category's cap in the rolling 24 hours to `now`
        (one round trip: the keys share the user's hash tag)."""
        since = int(now.timestamp() * 1000) - CAP_WINDOW_MS
        with store_errors():
            pipeline = self._redis.pipeline(transaction=False)
            for name in categories:
                pipeline.zcount(cap_key(user_id, name), since, "+inf")
            counts = pipeline.execute()
        return {name: int(count) for name, count in zip(categories, counts, strict=True)}

    # -- preferences -------------------------------------------------------

    def invalidate_preferences(self, user_id: int) -> None:
        """Forget a user's cached preferences (after they change in PostgreSQL)."""
        with store_errors():
            self._redis.set(preferences_key(user_id), INVALIDATED, ex=INVALIDATED_TTL_SECONDS)

    def cache_preferences(self, user_id: int, preferences: Preferences) -> None:
        """Write a user's new preferences through to the cache."""
        with store_errors():
            self._redis.set(
                preferences_key(user_id),
                json.dumps(preferences.to_dict(), separators=(",", ":")),
                ex=self._preferences_ttl,
            )

    def preferences(self, user_ids: Sequence[int]) -> dict[int, Preferences]:
        """The users' preferences: from the cache, the misses from PostgreSQL in one query."""
        keys = [preferences_key(user_id) for user_id in user_ids]
        with store_errors():
            if isinstance(self._redis, RedisCluster):
                # One MGET per slot, pipelined, answers in key order.
                cached = self._redis.mget_nonatomic(keys)
            else:
                cached = self._redis.mget(keys)
        found: dict[int, Preferences] = {}
        missing: list[int] = []
        for user_id, raw in zip(user_ids, cached, strict=True):
            parsed = _parse_cached(raw)
            if parsed is None:
                missing.append(user_id)
            else:
                found[user_id] = parsed
        if not missing:
            return found
        loaded = self._load_preferences(missing)
        with store_errors():
            pipe = self._redis.pipeline(transaction=False)
            for user_id in missing:
                preferences = loaded.get(user_id, DEFAULT_PREFERENCES)
                found[user_id] = preferences
                # NX: never overwrite a newer write-through or an invalidation.
                pipe.set(
                    preferences_key(user_id),
                    json.dumps(preferences.to_dict(), separators=(",", ":")),
                    ex=self._preferences_ttl,
                    nx=True,
                )
            pipe.execute()
        return found

    # -- a page --------------------------------------------------------------

    def apply(
        self,
        notification_id: str,
        page: str,
        category: Category,
        quiet_hours_mode: QuietHoursMode,
        recipients: Sequence[Recipient],
        now: datetime,
    ) -> FilterDecision:
        """Decide each recipient of a page: opt-out, quiet hours, dedupe, then cap."""
        rules = SendRules(category, now)
        users = list(dict.fromkeys(r.user_id for r in recipients))
        # Security pushes ignore every preference: skip the read.
        needs_preferences = category.can_opt_out or not category.transactional
        preferences = self.preferences(users) if users and needs_preferences else {}

        # Users with the same cached preferences share one parsed object: their
        # rules in one time zone are the same, worked out once per page.
        per_preferences: dict[tuple[int, str], UserRules] = {}
        filtered: list[tuple[int, DeliveryResult]] = []
        deferred: list[tuple[Recipient, datetime]] = []
        # Per user, the (position, recipient) pairs left for the script to decide.
        pending: dict[int, list[tuple[int, Recipient]]] = {}
        caps: dict[int, int | None] = {}
        devices_in_page: set[int] = set()
        for position, recipient in enumerate(recipients):
            chosen = preferences.get(recipient.user_id, DEFAULT_PREFERENCES)
            shared = (id(chosen), recipient.time_zone)
            user = per_preferences.get(shared)
            if user is None:
                user = per_preferences[shared] = rules.for_user(chosen, recipient.time_zone)
            if user.opted_out:
                filtered.append((position, _result(recipient, Outcome.OPTED_OUT)))
            elif user.quiet_until is not None:
                if quiet_hours_mode == "defer":
                    deferred.append((recipient, user.quiet_until))
                else:
                    filtered.append((position, _result(recipient, Outcome.QUIET_HOURS)))
            elif recipient.device_id in devices_in_page:
                filtered.append((position, _result(recipient, Outcome.DUPLICATE)))
            else:
                devices_in_page.add(recipient.device_id)
                pending.setdefault(recipient.user_id, []).append((position, recipient))
                caps[recipient.user_id] = user.daily_cap

        codes = self._decide_page(notification_id, page, category.name, pending, caps, now)
        eligible: list[tuple[int, Recipient]] = []
        for user_id, entries in pending.items():
            for (position, recipient), code in zip(entries, codes[user_id], strict=True):
                if code == _ELIGIBLE:
                    eligible.append((position, recipient))
                elif code == _DUPLICATE:
                    filtered.append((position, _result(recipient, Outcome.DUPLICATE)))
                else:
                    filtered.append((position, _result(recipient, Outcome.CAPPED)))
        eligible.sort(key=_position)
        filtered.sort(key=_position)
        return FilterDecision(
            eligible=[recipient for _, recipient in eligible],
            filtered=[result for _, result in filtered],
            deferred=deferred,
            eligible_positions=[position for position, _ in eligible],
        )

    def _decide_page(
        self,
        notification_id: str,
        page: str,
        category: str,
        pending: Mapping[int, Sequence[tuple[int, Recipient]]],
        caps: Mapping[int, int | None],
        now: datetime,
    ) -> dict[int, list[int]]:
        """Dedupe and caps, atomically per user: one script call (one per slot on a cluster)."""
        if not pending:
            return {}
        now_ms = int(now.timestamp() * 1000)
        seeds = self._lost_caps([u for u in pending if caps[u] is not None], category, now)

        def call(user_ids: Sequence[int]) -> tuple[list[str], list[Any]]:
            keys: list[str] = []
            args: list[Any] = [
                notification_id,
                page,
                now_ms,
                CAP_WINDOW_MS,
                SEEN_TTL_SECONDS,
                CAP_TTL_MS,
            ]
            for user_id in user_ids:
                keys += (seen_key(user_id, notification_id), cap_key(user_id, category))
                cap = caps[user_id]
                args += (-1 if cap is None else cap, len(pending[user_id]))
                args += [recipient.device_id for _, recipient in pending[user_id]]
                history = seeds.get(user_id, ())
                args.append(len(history))
                for seed_id, seed_ms in history:
                    args += (seed_id, seed_ms)
            return keys, args

        if isinstance(self._redis, RedisCluster):
            groups = group_by_slot(pending, self._redis.keyslot)
            calls = [call(group) for group in groups]
            with store_errors():
                answers = run_script_per_slot(self._redis, _DECIDE, self._decide.sha, calls)
        else:
            groups = [list(pending)]
            answers = [self._run(*call(groups[0]))]

        codes: dict[int, list[int]] = {}
        for group, answer in zip(groups, answers, strict=True):
            flat = [int(code) for code in answer]
            start = 0
            for user_id in group:
                count = len(pending[user_id])
                codes[user_id] = flat[start : start + count]
                start += count
        return codes

    def _lost_caps(
        self, user_ids: Sequence[int], category: str, now: datetime
    ) -> dict[int, list[tuple[str, int]]]:
        """The history of every user of the page whose cap set is missing, from
        PostgreSQL in one query: Redis may have lost it (a failover to a lagging
        replica, eviction), and a cap must hold all the same. A set that is missing
        because the user got nothing of the category for a day costs the same query
        and finds nothing. One pipelined EXISTS per page tells which are missing."""
        if self._load_cap_history is None or not user_ids:
            return {}
        with store_errors():
            pipe = self._redis.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.exists(cap_key(user_id, category))
            present = pipe.execute()
        missing = [u for u, found in zip(user_ids, present, strict=True) if not found]
        if not missing:
            return {}
        since = now - timedelta(milliseconds=CAP_WINDOW_MS)
        history = self._load_cap_history(missing, category, since)
        return {
            user_id: [(nid, int(at.timestamp() * 1000)) for nid, at in entries]
            for user_id, entries in history.items()
            if entries
        }

    def _run(self, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """One script call; a server that does not know the script yet gets its text."""
        script = self._decide
        with store_errors():
            try:
                answer = self._redis.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                answer = self._redis.eval(_DECIDE, len(keys), *keys, *args)
        return list(answer)


def _result(recipient: Recipient, outcome: Outcome) -> DeliveryResult:
    return DeliveryResult(recipient.device_id, recipient.user_id, outcome)


def _position(entry: tuple[int, Any]) -> int:
    return int(entry[0])


def _parse_cached(raw: Any) -> Preferences | None:
    """A cached entry; None for a miss, an invalidation marker or an unreadable value."""
    if raw is None or raw in (INVALIDATED, INVALIDATED.encode()):
        return None
    return _parse_entry(raw)


# Most users share a handful of distinct preference entries (the defaults above
# all): each distinct one is parsed once per process. Preferences are immutable.
@functools.lru_cache(maxsize=4096)
def _parse_entry(raw: str | bytes) -> Preferences | None:
    try:
        return Preferences.from_dict(json.loads(raw))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
