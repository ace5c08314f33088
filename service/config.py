"""Settings, read only from the environment and parsed strictly."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# The broker's queues: bulk fan-out never shares a queue (or a worker) with interactive work.
BULK_QUEUE = "bulk"
INTERACTIVE_QUEUE = "interactive"
QUEUES = (BULK_QUEUE, INTERACTIVE_QUEUE)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    for value in allowed:
        if raw.strip().lower() == value.lower():
            return value
    raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """Everything the service can be configured with. See the README's configuration table."""

    env: str = "demo"
    data_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""
    secret_key: str = ""
    # Messages reaching more people than this are announcements unless the sender asks otherwise.
    announcement_threshold: int = 50
    # Recipients written per fan-out batch (one transaction each).
    batch_size: int = 5000
    # Replies re-marking more participants than this are fanned out by the workers.
    inline_unread_limit: int = 500
    # Celery time limits: soft < hard < broker visibility timeout, always.
    task_soft_time_limit: int = 240
    task_time_limit: int = 300
    broker_visibility_timeout: int = 600
    # The sweep republishes work the broker may have lost.
    sweep_interval: float = 30.0
    # Work untouched for this long is considered lost by the sweep.
    stale_after: float = 60.0
    batch_max_attempts: int = 5
    broker_connect_timeout: float = 3.0
    session_cookie_secure: bool = False
    # Logging: `text` (human-readable lines) or `json` (one JSON object a line); level name.
    log_format: str = "text"
    log_level: str = "INFO"
    # Readiness checks (/health/ready) give each dependency this long to answer.
    health_timeout: float = 2.0
    # Flower's `user:password` list (comma-separated); only the Flower process needs it.
    flower_basic_auth: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def check(self) -> Settings:
        """Validate cross-field rules; raise ConfigError naming what is wrong."""
        if not (self.task_soft_time_limit < self.task_time_limit < self.broker_visibility_timeout):
            raise ConfigError(
                "Celery time limits must satisfy TASK_SOFT_TIME_LIMIT < TASK_TIME_LIMIT < "
                f"BROKER_VISIBILITY_TIMEOUT, got {self.task_soft_time_limit} / "
                f"{self.task_time_limit} / {self.broker_visibility_timeout}"
            )
        if self.is_production:
            missing = [
                name
                for name, value in (
                    ("SECRET_KEY", self.secret_key),
                    ("DATABASE_URL", self.database_url),
                    ("CELERY_BROKER_URL", self.broker_url),
                )
                if not value
            ]
            if missing:
                raise ConfigError(
                    "production mode (APP_ENV=production) needs these settings: "
                    + ", ".join(missing)
                )
        return self

    def check_flower(self) -> Settings:
        """The Flower process's own rule: in production it runs only behind basic auth."""
        if self.flower_basic_auth:
            for pair in self.flower_basic_auth.split(","):
                user, sep, password = pair.partition(":")
                if not (user and sep and password):
                    raise ConfigError(
                        "FLOWER_BASIC_AUTH must be user:password (comma-separated for several), "
                        "with neither part empty"
                    )
        elif self.is_production:
            raise ConfigError(
                "production mode (APP_ENV=production) needs these settings: FLOWER_BASIC_AUTH "
                "(user:password for Flower's basic authentication)"
            )
        return self


def demo_broker_socket(data_dir: Path) -> Path:
    """Where the demo mode's embedded Redis listens (a Unix socket in the data folder)."""
    return (data_dir / "redis" / "redis.sock").resolve()


def _demo_secret(data_dir: Path) -> str:
    """Demo mode keeps a generated secret key in its data folder so sessions survive restarts."""
    path = data_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        path.write_text(key)
        path.chmod(0o600)
        return key


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from environment variables (os.environ when not given)."""
    env = os.environ if env is None else env
    app_env = env.get("APP_ENV", "demo").strip().lower() or "demo"
    if app_env not in {"demo", "production", "test"}:
        raise ConfigError(f"APP_ENV must be demo, production or test, got {app_env!r}")
    data_dir = Path(env.get("DATA_DIR", "var"))
    database_url = env.get("DATABASE_URL", "")
    broker_url = env.get("CELERY_BROKER_URL", "")
    secret_key = env.get("SECRET_KEY", "")
    if app_env != "production":
        if not database_url:
            database_url = f"sqlite:///{(data_dir / 'messaging.db').resolve()}"
        if not broker_url:
            broker_url = f"redis+socket://{demo_broker_socket(data_dir)}"
        if not secret_key:
            secret_key = _demo_secret(data_dir)
    settings = Settings(
        env=app_env,
        data_dir=data_dir,
        database_url=database_url,
        broker_url=broker_url,
        secret_key=secret_key,
        announcement_threshold=_int(env, "ANNOUNCEMENT_THRESHOLD", 50, 1),
        batch_size=_int(env, "DELIVERY_BATCH_SIZE", 5000, 1),
        inline_unread_limit=_int(env, "INLINE_UNREAD_LIMIT", 500, 0),
        task_soft_time_limit=_int(env, "TASK_SOFT_TIME_LIMIT", 240, 1),
        task_time_limit=_int(env, "TASK_TIME_LIMIT", 300, 1),
        broker_visibility_timeout=_int(env, "BROKER_VISIBILITY_TIMEOUT", 600, 1),
        sweep_interval=_float(env, "SWEEP_INTERVAL", 30.0),
        stale_after=_float(env, "STALE_AFTER", 60.0),
        batch_max_attempts=_int(env, "BATCH_MAX_ATTEMPTS", 5, 1),
        broker_connect_timeout=_float(env, "BROKER_CONNECT_TIMEOUT", 3.0),
        session_cookie_secure=_bool(env, "SESSION_COOKIE_SECURE", app_env == "production"),
        log_format=_choice(env, "LOG_FORMAT", "text", ("text", "json")),
        log_level=_choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS),
        health_timeout=_float(env, "HEALTH_TIMEOUT", 2.0),
        flower_basic_auth=env.get("FLOWER_BASIC_AUTH", "").strip(),
    )
    return settings.check()
