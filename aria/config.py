"""Settings: one object read from the environment and `.env`.

Essentials keep the names deployment tools expect (TELEGRAM_BOT_TOKEN, OPENAI_API_KEY, ...); everything else
takes the ARIA_ prefix. `load_settings` turns validation errors into one line per variable, never echoing a secret.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import parse_qsl, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aria.errors import ConfigError
from aria.netguard import FetchAllow

CommaInts = Annotated[list[int], NoDecode]
CommaStrs = Annotated[list[str], NoDecode]
CommaPairs = Annotated[dict[str, SecretStr], NoDecode]
EventAuth = Literal["hmac", "github", "bearer", "basic"]
EVENT_AUTH_MODES: tuple[str, ...] = get_args(EventAuth)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OWN_PREFIXES = ("ARIA_", "TELEGRAM_", "OPENAI_")  # Aria's settings (and its secrets) are read from these
# Seconds Telegram holds an idle getUpdates: its longest, so an idle Aria polls about 72 times an hour.
LONG_POLL_SECONDS = 50


class Settings(BaseSettings):
    """Everything Aria can be configured with; `.env.example` documents each field."""

    model_config = SettingsConfigDict(
        env_prefix="ARIA_", env_file=".env", env_file_encoding="utf-8", env_ignore_empty=True, extra="ignore",
        populate_by_name=True,
    )

    # Telegram
    telegram_bot_token: SecretStr | None = Field(default=None, validation_alias="TELEGRAM_BOT_TOKEN")
    telegram_api_url: str = Field(default="https://api.telegram.org", validation_alias="TELEGRAM_API_URL")
    owner_ids: CommaInts = Field(default_factory=list, validation_alias="ARIA_OWNER_IDS")
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=1, le=65535)
    poll_stall_seconds: float = Field(default=180.0, gt=0)
    # The answer is previewed as it is written (a draft, or edits of one message) at most once per this many seconds.
    preview_seconds: float = Field(default=1.0, ge=0.1)
    allow_groups: bool = False  # answer an owner in groups and supergroups too (else only private chats)
    # Documents read from Telegram (text-like files only); 20 MiB is what the Bot API lets a bot download.
    document_max_bytes: int = Field(default=32 * 1024, ge=1024, le=20 * 1024 * 1024)

    # Event ingress (signed webhooks from the owner's systems)
    event_secrets: CommaPairs = Field(default_factory=dict)
    event_auth: Annotated[dict[str, EventAuth], NoDecode] = Field(default_factory=dict)  # source -> mode
    event_rules_file: Path | None = None
    event_max_bytes: int = Field(default=256 * 1024, ge=1024)
    event_max_age_seconds: float = Field(default=300.0, gt=0)

    # Model endpoint
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    model_cheap: str = Field(default="gpt-4o-mini", validation_alias="ARIA_MODEL_CHEAP")
    model_strong: str = Field(default="gpt-4o", validation_alias="ARIA_MODEL_STRONG")
    model_fallbacks: CommaStrs = Field(default_factory=list)
    # A streamed call is judged by these, never by its total time (a slow local model that keeps writing is fine).
    llm_first_token_seconds: float = Field(default=120.0, gt=0)
    llm_silence_seconds: float = Field(default=30.0, gt=0)
    prices_file: Path | None = None
    # Voice notes: transcribed when a model is named, on its own endpoint or the model endpoint above.
    transcribe_model: str | None = None
    transcribe_base_url: str | None = None
    transcribe_usd_per_minute: float | None = Field(default=None, ge=0)
    max_output_tokens: int = Field(default=1024, ge=16)
    min_output_tokens: int = Field(default=64, ge=1)

    # Caps
    run_max_tokens: int = Field(default=60_000, ge=100)
    run_max_usd: float = Field(default=0.10, gt=0)
    run_max_steps: int = Field(default=8, ge=1)
    run_max_seconds: float = Field(default=120.0, gt=0)
    day_max_usd: float = Field(default=2.00, gt=0)
    month_max_usd: float | None = Field(default=None, gt=0)
    cheap_only_share: float = Field(default=0.8, gt=0, le=1)
    history_tokens: int = Field(default=3_000, ge=0)

    # Knowledge: notes a request gets (tokens at most; 0 sends none), and whether a follow-up question is rewritten
    # into a standalone query by the cheap model (one short call, within the run's budget) before notes are searched.
    knowledge_tokens: int = Field(default=800, ge=0)
    knowledge_rewrite: bool = True

    # Breakers
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)

    # Time and storage
    timezone: str = Field(default="UTC", validation_alias="ARIA_TIMEZONE")
    digest_time: dt.time = Field(default=dt.time(8, 0), validation_alias="ARIA_DIGEST_TIME")
    data_dir: Path = Field(default=Path("data"), validation_alias="ARIA_DATA_DIR")
    database_path: Path | None = None

    # Skills
    skills_dir: Path | None = None
    mcp_config: Path | None = None  # a TOML file of MCP servers whose tools join Aria's (aria/mcp/config.py)
    shell_enabled: bool = True  # run_command exists, always behind approval unless the policy allowlists it
    shell_timeout_seconds: float = Field(default=30.0, gt=0)
    shell_env: CommaStrs = Field(default_factory=list)  # names passed to commands beside PATH, HOME, LANG, TZ
    # Hosts (`nas.home.arpa`), `*.suffix` patterns and CIDRs fetch_url/check_url may reach although not public.
    fetch_allow: CommaStrs = Field(default_factory=list)

    # Outbound messages to third parties
    smtp_url: SecretStr | None = None  # smtp://user:password@host:587 or smtps://...
    smtp_from: str | None = None
    outbound_webhook_url: SecretStr | None = None
    draft_review: bool = True  # the editor (cheap model) reviews drafts for third parties; off only by setting

    # Approvals, policy, alerts
    approval_ttl_hours: float = Field(default=24.0, gt=0)
    policy_file: Path | None = None
    allow_risky_auto: bool = False
    anomaly_factor: float = Field(default=3.0, gt=1)

    # Shadow deployment and gradual rollout: a promotion is suggested only past both gates
    rollout_min_judged: int = Field(default=20, ge=1)  # judged proposals (or decided approvals) at the level
    rollout_min_agreement: float = Field(default=0.90, gt=0, le=1)  # Wilson 95 % lower bound on agreement

    log_level: str = "INFO"

    @field_validator("owner_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.replace(";", ",").split(",") if p.strip()]
            try:
                return [int(p) for p in parts]
            except ValueError:
                raise ValueError("must be comma-separated numeric Telegram user IDs") from None
        return value

    @field_validator("model_fallbacks", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("shell_env", mode="before")
    @classmethod
    def _split_env_names(cls, value: Any) -> Any:
        names = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
        if not isinstance(names, list):
            return names
        for name in names:
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name.upper().startswith(_OWN_PREFIXES):
                raise ValueError(f"{name} is one of Aria's settings, which never reach commands")
        return names
    @field_validator("fetch_allow", mode="before")
    @classmethod
    def _split_allow(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("fetch_allow")
    @classmethod
    def _valid_allow(cls, value: list[str]) -> list[str]:
        FetchAllow.parse(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("event_secrets", mode="before")
    @classmethod
    def _split_pairs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in (part.strip() for part in value.split(",")):
            source, sep, secret = item.partition("=")
            if not item:
                continue
            if not sep or not source.strip() or not secret.strip():
                raise ValueError("must be comma-separated source=secret pairs")
            pairs[source.strip()] = secret.strip()
        return pairs

    @field_validator("event_auth", mode="before")
    @classmethod
    def _split_modes(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        modes: dict[str, str] = {}
        for item in (part.strip() for part in value.split(",")):
            source, sep, mode = (p.strip() for p in item.partition("="))
            if not item:
                continue
            if not sep or not source or mode.lower() not in EVENT_AUTH_MODES:
                raise ValueError(f"{item!r}: must be comma-separated source=mode pairs, the mode one of "
                                 f"{', '.join(EVENT_AUTH_MODES)}")
            modes[source] = mode.lower()
        return modes

    @model_validator(mode="after")
    def _stall_above_long_poll(self) -> Settings:
        # An idle long poll completes only every LONG_POLL_SECONDS: a limit at or below that restarts healthy polling.
        if self.poll_stall_seconds <= LONG_POLL_SECONDS:
            raise ValueError(f"{env_name('poll_stall_seconds')}: must be above the {LONG_POLL_SECONDS} s long poll (an "
                             f"idle getUpdates is held that long); got {self.poll_stall_seconds:g}, use 120 or more")
        return self

    @model_validator(mode="after")
    def _auth_has_secret(self) -> Settings:
        unknown = sorted(set(self.event_auth) - set(self.event_secrets))
        if unknown:
            raise ValueError(f"{env_name('event_auth')}: no secret in {env_name('event_secrets')} for "
                             f"{', '.join(unknown)}")
        return self

    def event_auth_for(self, source: str) -> EventAuth:
        """How a source authenticates its events: as configured, else `github` for the source named github (its
        own signature scheme), else `hmac`."""
        return self.event_auth.get(source) or ("github" if source == "github" else "hmac")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Europe/Berlin") from None
        return value

    @field_validator("telegram_api_url", "openai_base_url", "webhook_url", "transcribe_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None if value == "" else value
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def tz(self) -> ZoneInfo:
        """The owner's time zone."""
        return ZoneInfo(self.timezone)

    @property
    def db_path(self) -> Path:
        """Where the SQLite ledger lives."""
        return self.database_path or self.data_dir / "aria.db"

    @property
    def fetch_allowed(self) -> FetchAllow:
        """What ARIA_FETCH_ALLOW lets the web tools reach beyond public addresses."""
        return FetchAllow.parse(self.fetch_allow)

    @property
    def model_configured(self) -> bool:
        """True when there is an endpoint to talk to (a key for OpenAI, or any base URL)."""
        return self.openai_api_key is not None or bool(self.openai_base_url)

    @property
    def bot_api_base(self) -> str:
        """Base URL handed to python-telegram-bot (it appends the token)."""
        return f"{self.telegram_api_url}/bot"

    def secrets(self) -> list[str]:
        """Every secret value, so log filters and error texts can scrub them. A URL that is a secret also gives the
        credentials inside it, which can show up on their own (a password, a token in the path or query)."""
        found = [self.telegram_bot_token, self.openai_api_key, self.webhook_secret, self.smtp_url,
                 self.outbound_webhook_url, *self.event_secrets.values()]
        values = [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]
        for url in (self.smtp_url, self.outbound_webhook_url):
            if url is not None:
                values += url_credentials(url.get_secret_value())
        return list(dict.fromkeys(values))


TOKEN_CHARS = 16  # a path segment or query value this long in a secret URL is taken for a token


def url_credentials(url: str) -> list[str]:
    """The parts of a secret URL that are credentials on their own: the password, and path segments and query
    values long enough to be tokens (a webhook URL's token usually sits in its path)."""
    parts = urlsplit(url)
    found = [unquote(parts.password)] if parts.password else []
    found += [unquote(segment) for segment in parts.path.split("/") if len(segment) >= TOKEN_CHARS]
    found += [value for _, value in parse_qsl(parts.query) if len(value) >= TOKEN_CHARS]
    return found


# Field name -> the environment variable a user sets, for error messages.
def env_name(field: str) -> str:
    """The environment variable that sets a field."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, str):
        return alias
    return f"ARIA_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings, raising ConfigError with one line per problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            field = str(err["loc"][0]) if err["loc"] else "?"
            name = env_name(field) if field in Settings.model_fields else field
            reason = err["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {reason}" if err["loc"] else reason)  # a model check names its variables
        raise ConfigError(problems) from None


def require_owner(settings: Settings) -> None:
    """Refuse to serve Telegram with nobody allowed in."""
    if not settings.owner_ids:
        raise ConfigError(["ARIA_OWNER_IDS: set it to your numeric Telegram user ID (comma-separate several)"])
