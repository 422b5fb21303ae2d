"""The `pushflow` command's mistakes: one line on standard error, a non-zero exit,
no traceback, and all of it before the local stack would start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pushflow_local import cli

pytestmark = pytest.mark.unit


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture(autouse=True)
def no_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case must be refused before the stack starts: starting it fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the local stack was started")

    monkeypatch.setattr(cli, "LocalRuntime", refuse)


def assert_one_line(code: int, err: str, *says: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for text in says:
        assert text in err, err


@pytest.mark.parametrize("value", ["-5", "0", "many"])
def test_a_bad_recipient_count(capsys: pytest.CaptureFixture[str], value: str) -> None:
    assert_one_line(*run(capsys, "demo", "--recipients", value), "--recipients")


def test_a_missing_event_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert_one_line(*run(capsys, "invoke", "Prepare", "-e", str(missing)), str(missing))


def test_an_event_file_that_is_not_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"notification_id": ')
    assert_one_line(*run(capsys, "invoke", "Prepare", "-e", str(broken)), "is not JSON")


def test_an_unknown_function_is_named_with_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert_one_line(*run(capsys, "invoke", "Nope"), "'Nope'", "PrepareFunction")


def test_invoke_help_lists_the_functions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["invoke", "--help"])
    out = capsys.readouterr().out
    for name in ("ApiFunction", "PrepareFunction", "PublishBatchFunction"):
        assert name in out


def test_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, err = run(capsys, "local", "serve", "--port", str(port))
    assert_one_line(code, err, f"127.0.0.1:{port}")


@pytest.mark.parametrize("port", ["-1", "70000", "http"])
def test_a_port_that_is_no_port(capsys: pytest.CaptureFixture[str], port: str) -> None:
    assert_one_line(*run(capsys, "local", "serve", "--port", port), "--port")
