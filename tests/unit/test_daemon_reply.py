"""A daemon's error reply reaches the terminal escaped and bounded (it may quote a name
a traced process chose), with one of aiobpf's exit statuses."""

from __future__ import annotations

from aiobpf import errors
from aiobpf.cli.common import daemon_error


def test_an_error_reply_is_escaped_bounded_and_keeps_its_status() -> None:
    error = daemon_error({"error": "pid 7 (\x1b]0;owned\x07\x1b[2J" + "x" * 5000 + ")",
                          "hint": "\r\x1b[1Afake prompt", "exit_code": 77})
    text = f"{error} {error.hint}"
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert len(str(error)) <= 300 and "pid 7" in str(error)
    assert error.exit_code == 77


def test_a_garbled_exit_status_is_an_error() -> None:
    error = daemon_error({"error": "no", "exit_code": "seventy"})
    assert error.exit_code == errors.EXIT_ERROR
