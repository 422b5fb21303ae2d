"""The Redis store: the hot, per-recipient state of sends.

Keys are hash-tagged so that every command and script touches one hash slot
(ElastiCache Serverless runs in cluster mode): a page's dedupe markers live
in one hash under `{n:<notification>:<page>}`; a user's caps and cached
preferences under `{u:<user id>}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pushflow.adapters.redis_client import RedisClient, connect, store_errors

# Long enough for every retry and redrive of a page; short enough that markers
# of finished sends do not pile up (one hash of ~60 B per device per page).
DEDUPE_TTL_SECONDS = 48 * 3600
PENDING = "pending"

# Claim each device of a page for publishing, in one round trip and one slot:
# returns, per device, "" when claimed now, else what an earlier attempt left
# ("pending" or the SNS message id). A page's first attempt (the usual case)
# finds no hash: every device is claimed by one HSET and the answer is empty,
# a third of the server's time of one HSETNX per device.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local fields = {}
  for i = 2, #ARGV do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = 'pending'
  end
  -- unpack() puts every value on Lua's stack: a slice at a time
  for first = 1, #fields, 1000 do
    redis.call('HSET', KEYS[1], unpack(fields, first, math.min(first + 999, #fields)))
  end
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return {}
end
local out = {}
for i = 2, #ARGV do
  local device = ARGV[i]
  if redis.call('HSETNX', KEYS[1], device, 'pending') == 1 then
    out[#out + 1] = ''
  else
    out[#out + 1] = redis.call('HGET', KEYS[1], device)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return out
"""

# Settle a page's devices in one round trip, atomically: the message ids of the
# published ones, the released ones removed. A script rather than MULTI/EXEC:
# redis-py's cluster transactions can leave a reply unread on a pooled
# connection when a node fails mid-EXEC (seen with 8.1), a script cannot.
# ARGV: the number of published devices, their (device, message id) pairs, then
# the released devices.
_SETTLE = """
local last_pair = 1 + 2 * tonumber(ARGV[1])
for first = 2, last_pair, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, first, math.min(first + 999, last_pair)))
end
for first = last_pair + 1, #ARGV, 1000 do
  redis.call('HDEL', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], __TTL__)
end
return 1
"""


_SETTLE = _SETTLE.replace("__TTL__", str(DEDUPE_TTL_SECONDS))


def page_key(notification_id: str, page: str) -> str:
    return f"pf:{{n:{notification_id}:{page}}}:sent"


class RecipientStore:
    def __init__(self, client: RedisClient) -> None:
        self._redis = client
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)

    @classmethod
    def from_url(cls, url: str) -> RecipientStore:
        # One client shared by threads (redis-py is thread-safe): a cluster client
        # when the server runs in cluster mode, asked of the server itself.
        return cls(connect(url))

    @property
    def client(self) -> RedisClient:
        return self._redis

    def close(self) -> None:
        self._redis.close()

    def ping(self) -> bool:
        with store_errors():
            return bool(self._redis.ping())

    # -- exactly-once publishing ------------------------------------------

    def claim(
        self, notification_id: str, page: str, device_ids: Sequence[int]
    ) -> dict[int, str | None]:
        """Claim devices for publishing: None where claimed now, else the earlier marker.

        A page's devices are distinct (the devices table's key): the same device
        twice in one claim is refused, as the first-attempt path would claim it twice.
        """
        if not device_ids:
            return {}
        if len(set(device_ids)) != len(device_ids):
            raise ValueError("a claim names the same device more than once")
        with store_errors():
            previous: list[str] = self._claim(
                keys=[page_key(notification_id, page)],
                args=[DEDUPE_TTL_SECONDS, *device_ids],
            )
        if not previous:
            return dict.fromkeys(device_ids)
        return {device: (value or None) for device, value in zip(device_ids, previous, strict=True)}

    def settle(
        self,
        notification_id: str,
        page: str,
        sent: Mapping[int, str],
        released: Sequence[int] = (),
    ) -> None:
        """Mark published devices with their message id; release the ones to retry."""
        if not sent and not released:
            return
        pairs = [item for device, message in sent.items() for item in (device, message)]
        with store_errors():
            self._settle(
                keys=[page_key(notification_id, page)], args=[len(sent), *pairs, *released]
            )

    def markers(self, notification_id: str, page: str) -> dict[int, str]:
        with store_errors():
            raw: dict[str, str] = self._redis.hgetall(page_key(notification_id, page))  # type: ignore[assignment]
        return {int(device): value for device, value in raw.items()}
