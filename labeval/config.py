"""Settings, read once from the environment at the edge (cli) and passed in explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from labeval.logs import LogFormat

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

_ENV_PREFIX = "LABEVAL_"
_EMPTY_IS_A_VALUE = frozenset({"grading_cron"})


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # None: start (or join) an embedded PostgreSQL in data_dir.
    database_url: str | None = None
    data_dir: str = ".labeval"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    log_level: LogLevel = "INFO"
    # Log lines as JSON objects or as text; None: JSON for `serve`, text for the other commands.
    log_format: LogFormat | None = None
    # Prometheus metrics at /metrics; "off" removes the route.
    metrics: Literal["on", "off"] = "on"
    # Seconds `serve` gives in-flight requests to finish once told to stop, and then again the
    # scheduled job that is running; what is still running after that is cancelled.
    shutdown_timeout: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # Path to a policy TOML; None uses the default shipped in scoring/.
    policy: str | None = None
    # Cron expression (5 fields) for the scheduled grading run; empty disables it.
    grading_cron: str = "0 2 * * *"
    pool_min_size: Annotated[int, msgspec.Meta(ge=1)] = 1
    pool_max_size: Annotated[int, msgspec.Meta(ge=1)] = 10
    # Pepper of the API keys' stored hashes (labeval.keys); None: a file made once in data_dir.
    key_pepper: str | None = None
    # Requests per minute per API key (a token bucket per process: each replica counts its own).
    rate_limit_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 600
    # Officers' pages: a session ends after this many idle minutes, and at the latest after
    # session_hours from sign-in.
    session_idle_minutes: Annotated[int, msgspec.Meta(ge=1)] = 60
    session_hours: Annotated[int, msgspec.Meta(ge=1)] = 12
    # Secure (TLS-only) cookies: "auto" when the request came over https (directly, or as the
    # proxy's X-Forwarded-Proto says), "on" always, "off" never (plain-http development only).
    secure_cookies: Literal["auto", "on", "off"] = "auto"
    # Sign-in rate limit: failed attempts allowed per username, and per client address, in the
    # window; beyond that the form answers 429 until the oldest failure leaves the window.
    signin_failures_per_user: Annotated[int, msgspec.Meta(ge=1)] = 5
    signin_failures_per_client: Annotated[int, msgspec.Meta(ge=1)] = 20
    signin_window_minutes: Annotated[int, msgspec.Meta(ge=1)] = 15

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from LABEVAL_* variables; explicit overrides (cli flags) win.

        Unknown LABEVAL_* variables are ignored rather than rejected so that deployment tooling
        may add its own; malformed values raise msgspec.ValidationError naming the field.
        """
        env = os.environ if environ is None else environ
        fields = set(cls.__struct_fields__)
        raw: dict[str, object] = {}
        for key, value in env.items():
            if key.startswith(_ENV_PREFIX):
                name = key[len(_ENV_PREFIX) :].lower()
                # An empty variable is "not set", except where empty is a value of its own
                # (LABEVAL_GRADING_CRON="" switches the schedule off).
                if name in fields and (value != "" or name in _EMPTY_IS_A_VALUE):
                    raw[name] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        if "log_level" in raw:
            raw["log_level"] = str(raw["log_level"]).upper()
        for name in ("log_format", "metrics", "secure_cookies"):
            if name in raw:
                raw[name] = str(raw[name]).lower()
        # strict=False lets "8000" from the environment become an int.
        return msgspec.convert(raw, cls, strict=False)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()
