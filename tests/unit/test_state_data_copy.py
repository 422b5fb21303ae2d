"""The local runtime's stand-in for `copy.deepcopy` where moto copies state data."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from pushflow.domain.models import Outcome
from pushflow_local.runtime import _StateDataCopy

pytestmark = pytest.mark.unit


def test_json_state_data_is_copied_as_deepcopy_copies_it() -> None:
    shared = {"first_name": "Anna"}
    value: dict[str, Any] = {
        "recipients": [{"device_id": 1, "sandbox": False, "attributes": shared}],
        "also": shared,
        "numbers": [0, -1, 2**70, 1.5, -0.0, None, True],
        "text": "tab\there, ünïcode",
    }

    copied = _StateDataCopy.deepcopy(value)

    assert copied == value == copy.deepcopy(value)
    assert list(copied) == list(value)  # key order kept
    assert copied["numbers"][-1] is True
    # A copy, not the same objects, with what was shared still shared.
    assert copied["recipients"][0]["attributes"] is copied["also"]
    assert copied["also"] is not shared
    copied["also"]["first_name"] = "Ben"
    assert shared == {"first_name": "Anna"}


@pytest.mark.parametrize(
    "value",
    [
        {"outcome": Outcome.SENT},  # a str subclass: its type is kept
        {"at": datetime(2026, 11, 24, tzinfo=UTC)},
        {"object": object()},  # neither marshal nor pickle: deepcopy
    ],
)
def test_other_values_fall_back_and_keep_their_types(value: dict[str, Any]) -> None:
    copied = _StateDataCopy.deepcopy(value)

    assert copied is not value
    (key,) = value
    assert type(copied[key]) is type(value[key])
    if type(value[key]) is not object:  # a bare object() equals only itself
        assert copied[key] == value[key]
