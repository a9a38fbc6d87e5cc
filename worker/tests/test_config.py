"""Settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln_worker.config import ConfigError, Settings
from tests.conftest import SECRET_TEXT


def test_defaults_suit_one_gpu() -> None:
    settings = Settings.from_env({"KILN_WORKER_SECRET": SECRET_TEXT})
    assert (settings.slots, settings.timeout, settings.port, settings.pipeline) == (
        1,
        180.0,
        8000,
        "trellis2",
    )
    assert settings.model == "microsoft/TRELLIS.2-4B"


def test_every_variable_is_read() -> None:
    env = {
        "KILN_WORKER_SECRET": SECRET_TEXT,
        "KILN_WORKER_HOST": "127.0.0.1",
        "KILN_WORKER_PORT": "9001",
        "KILN_WORKER_SLOTS": "2",
        "KILN_WORKER_PIPELINE": "pkg.mod:Cls",
        "KILN_WORKER_MODEL": "/models/trellis",
        "KILN_WORKER_TIMEOUT": "90.5",
        "KILN_WORKER_CALLBACK_ATTEMPTS": "3",
        "KILN_WORKER_CALLBACK_BACKOFF": "0.1",
        "KILN_WORKER_CALLBACK_BACKOFF_MAX": "2",
        "KILN_WORKER_CALLBACK_TIMEOUT": "10",
        "KILN_WORKER_PROGRESS_ATTEMPTS": "1",
        "KILN_WORKER_PROGRESS_INTERVAL": "1",
        "KILN_WORKER_STOP_GRACE": "30",
        "KILN_WORKER_TMP_DIR": "/var/tmp/kw",
        "KILN_WORKER_MAX_REQUEST_BYTES": "1000",
        "KILN_WORKER_LOG_LEVEL": "debug",
        "KILN_WORKER_LOG_FILE": "/var/log/kw.log",
    }
    s = Settings.from_env(env)
    assert (s.host, s.port, s.slots, s.pipeline, s.model) == (
        "127.0.0.1",
        9001,
        2,
        "pkg.mod:Cls",
        "/models/trellis",
    )
    assert (s.timeout, s.callback_attempts, s.callback_backoff, s.callback_backoff_max) == (
        90.5,
        3,
        0.1,
        2.0,
    )
    assert (s.callback_timeout, s.progress_attempts, s.progress_interval, s.stop_grace) == (
        10.0,
        1,
        1.0,
        30.0,
    )
    assert s.tmp_dir == Path("/var/tmp/kw") and s.max_request_bytes == 1000
    assert s.log_level == "DEBUG" and s.log_file == Path("/var/log/kw.log")


def test_command_line_overrides_win() -> None:
    s = Settings.from_env(
        {"KILN_WORKER_SECRET": SECRET_TEXT, "KILN_WORKER_PORT": "9001"}, port=0, host=None
    )
    assert s.port == 0 and s.host == "0.0.0.0"


def test_all_problems_are_reported_at_once_without_the_secret() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "KILN_WORKER_SECRET": "whsec_dG9vc2hvcnQ=",
                "KILN_WORKER_SLOTS": "0",
                "KILN_WORKER_TIMEOUT": "0",
                "KILN_WORKER_PORT": "http",
                "KILN_WORKER_LOG_LEVEL": "LOUD",
                "KILN_WORKER_CALLBACK_BACKOFF": "nan",
            }
        )
    message = str(info.value)
    for name in ("SECRET", "SLOTS", "TIMEOUT", "PORT", "LOG_LEVEL", "CALLBACK_BACKOFF"):
        assert f"KILN_WORKER_{name}" in message
    assert "dG9vc2hvcnQ" not in message


def test_repr_masks_the_secret() -> None:
    s = Settings.from_env({"KILN_WORKER_SECRET": SECRET_TEXT})
    assert SECRET_TEXT[6:] not in repr(s) and "whsec_…" in repr(s)
