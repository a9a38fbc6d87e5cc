"""Configuration from environment variables (and a few command-line overrides).

Everything a deployment changes is an environment variable, so that a systemd unit or a
container sets it in one place. Every problem is reported at once, and the secret's
value never appears in a message, a `repr` or a log line.
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from .signing import Secret, SecretError

ENV_PREFIX = "KILN_WORKER_"


class ConfigError(Exception):
    """One or more settings are invalid; the message lists them all."""


@dataclass
class Settings:
    """The worker's settings. Defaults suit one RTX 4090 running TRELLIS.2."""

    #: The channel's shared secret (`whsec_…`); required.
    secret: Secret
    host: str = "0.0.0.0"
    port: int = 8000
    #: Jobs run at once. One per GPU: TRELLIS.2-4B needs most of a 24 GB card.
    slots: int = 1
    #: `trellis2`, `module:Class` or `path/to/file.py:Class`.
    pipeline: str = "trellis2"
    #: The model to load: a Hugging Face id or a local directory.
    model: str = "microsoft/TRELLIS.2-4B"
    #: Per-job limit in seconds; a dispatch's `timeout_seconds` can only shorten it.
    timeout: float = 180.0
    #: Callback delivery: attempts per callback (the first try included), the first
    #: backoff delay, the largest delay, and the time limit of one request.
    callback_attempts: int = 8
    callback_backoff: float = 0.5
    callback_backoff_max: float = 30.0
    callback_timeout: float = 120.0
    #: Attempts for a progress callback, which is optional and soon out of date.
    progress_attempts: int = 2
    #: Minimum seconds between two progress callbacks of one job.
    progress_interval: float = 0.25
    #: After a job is stopped (timeout, or kiln said 409), how long its GPU thread may
    #: take to notice before the worker reports itself unhealthy.
    stop_grace: float = 120.0
    #: Where jobs keep their files while they run; each job gets its own directory,
    #: removed when the job ends.
    tmp_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "kiln-worker")
    #: Largest dispatch request accepted (the picture plus the form fields).
    max_request_bytes: int = 64 * 1024 * 1024
    log_level: str = "INFO"
    #: Optional log file, rotated daily and kept 7 days (seed 002 §10).
    log_file: Path | None = None

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "secret"
        )
        return f"Settings(secret=Secret('whsec_…'), {shown})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read `KILN_WORKER_*` variables; `overrides` (from the command line) win.

        Raises `ConfigError` listing every invalid or missing setting.
        """
        env = os.environ if env is None else env
        problems: list[str] = []
        values: dict[str, object] = {}

        secret_text = env.get(ENV_PREFIX + "SECRET", "")
        secret: Secret | None = None
        if not secret_text:
            problems.append(
                "KILN_WORKER_SECRET is required: the `whsec_…` secret of the kiln channel "
                "this worker serves"
            )
        else:
            try:
                secret = Secret(secret_text)
            except SecretError as err:
                problems.append(f"KILN_WORKER_SECRET: {err}")

        def text(name: str, attr: str) -> None:
            raw = env.get(ENV_PREFIX + name)
            if raw is not None and raw.strip():
                values[attr] = raw.strip()

        def number(
            name: str, attr: str, kind: type, minimum: float, *, strict: bool = False
        ) -> None:
            raw = env.get(ENV_PREFIX + name)
            if raw is None or not raw.strip():
                return
            try:
                value = kind(raw.strip())
            except ValueError:
                problems.append(f"{ENV_PREFIX}{name}: `{raw}` is not a {kind.__name__}")
                return
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{ENV_PREFIX}{name}: must be a finite number")
                return
            if value < minimum or (strict and value == minimum):
                relation = "greater than" if strict else "at least"
                problems.append(f"{ENV_PREFIX}{name}: must be {relation} {minimum}, not {raw}")
                return
            values[attr] = value

        text("HOST", "host")
        number("PORT", "port", int, 0)
        number("SLOTS", "slots", int, 1)
        text("PIPELINE", "pipeline")
        text("MODEL", "model")
        number("TIMEOUT", "timeout", float, 0, strict=True)
        number("CALLBACK_ATTEMPTS", "callback_attempts", int, 1)
        number("CALLBACK_BACKOFF", "callback_backoff", float, 0)
        number("CALLBACK_BACKOFF_MAX", "callback_backoff_max", float, 0)
        number("CALLBACK_TIMEOUT", "callback_timeout", float, 0, strict=True)
        number("PROGRESS_ATTEMPTS", "progress_attempts", int, 1)
        number("PROGRESS_INTERVAL", "progress_interval", float, 0)
        number("STOP_GRACE", "stop_grace", float, 0)
        number("MAX_REQUEST_BYTES", "max_request_bytes", int, 1)
        text("LOG_LEVEL", "log_level")
        tmp = env.get(ENV_PREFIX + "TMP_DIR", "").strip()
        if tmp:
            values["tmp_dir"] = Path(tmp)
        log_file = env.get(ENV_PREFIX + "LOG_FILE", "").strip()
        if log_file:
            values["log_file"] = Path(log_file)

        for key, value in overrides.items():
            if value is not None:
                values[key] = value

        if "port" in values and not 0 <= int(values["port"]) <= 65535:  # type: ignore[call-overload]
            problems.append(f"port must be between 0 and 65535, not {values['port']}")
        level = str(values.get("log_level", "INFO")).upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            problems.append(f"{ENV_PREFIX}LOG_LEVEL: `{level}` is not a logging level")
        values["log_level"] = level

        if problems or secret is None:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
        return cls(secret=secret, **values)  # type: ignore[arg-type]


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(settings: Settings) -> None:
    """Log to stderr (and to a daily-rotated file when configured).

    stdout is kept for the one line announcing the bound address, which the process
    that started the worker (kiln's tests, a supervisor) may read.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(LOG_FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.TimedRotatingFileHandler(
            settings.log_file, when="midnight", backupCount=7, encoding="utf-8"
        )
        rotating.setFormatter(formatter)
        root.addHandler(rotating)
    root.setLevel(settings.log_level)
    # httpx logs every request at INFO; our own lines say more, and say it once.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
