"""Settings: one validated model built at start from a TOML file and ``BRIDGE_*`` variables.

Sources, strongest first: keyword arguments (tests), environment variables ``BRIDGE_…``
(nested keys joined with ``__``, e.g. ``BRIDGE_SMTP__PORT=2626``), the TOML file named by
``--config`` or ``BRIDGE_CONFIG``, then the embedded defaults. The embedded defaults need no
file and no credentials: SQLite in the working directory, SMTP on 127.0.0.1:2525, HTTP on
127.0.0.1:8080 and a ``demo`` account (password ``demo``) routed to the ``dryrun`` upstream.

Every setting here is documented in ``config/sms-bridge.example.toml`` and the README.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_networks(value: list[str]) -> list[str]:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP network") from exc
    return value


def _check_charset(value: str) -> str:
    import codecs

    try:
        codecs.lookup(value)
    except LookupError as exc:
        raise ValueError(f"unknown charset {value!r}") from exc
    return value


def _check_http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


NetworkList = Annotated[list[str], AfterValidator(_check_networks)]
Charset = Annotated[str, AfterValidator(_check_charset)]
HttpUrlText = Annotated[str, AfterValidator(_check_http_url)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SmtpSettings(_Section):
    """The SMTP intake listener (aiosmtpd)."""

    host: str = "127.0.0.1"
    port: int = Field(2525, ge=0, le=65535)
    hostname: str = "sms-bridge"
    accepted_domains: list[str] = Field(default_factory=list)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth: Literal["off", "optional", "required"] = "optional"
    auth_require_tls: bool = True
    auth_allow_plaintext_on_loopback: bool = True
    auth_attempts_per_connection: int = Field(3, ge=1)
    max_message_size: int = Field(10 * 1024 * 1024, ge=1024)
    max_line_length: int = Field(8192, ge=1001)
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    timeout: float = Field(60.0, gt=0)
    max_connections: int = Field(500, ge=1)
    max_connections_per_ip: int = Field(100, ge=1)
    duplicate_window: float = Field(2 * 86400.0, ge=0)

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self


class HttpSettings(_Section):
    """The HTTP listener: inbound endpoints, admin API, health, readiness, metrics."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    keepalive_timeout: float = Field(15.0, gt=0)
    access_log: bool = False
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    admin_token: SecretStr | None = None


class InboundSourceSettings(_Section):
    """A provider that pushes MO SMS, short-code hits and delivery reports to the bridge."""

    secret: SecretStr
    allowed_networks: NetworkList = Field(default_factory=list)
    charset: Charset = "windows-1251"
    dlr_format: str = "smstraffic"


class ShortCodeSettings(_Section):
    password: SecretStr
    max_parts: int = Field(1, ge=1, le=255)
    fallback_reply: str = ""


class ReplyScriptSettings(_Section):
    """A reply script for a short code (and keyword), registered in the configuration."""

    shortcode: str
    keyword: str | None = None
    url: HttpUrlText
    method: Literal["GET", "POST"] = "GET"
    timeout: float = Field(3.0, gt=0)
    secret: SecretStr | None = None


class WebhookSettings(_Section):
    url: HttpUrlText
    secret: SecretStr
    timeout: float = Field(10.0, gt=0)


class RouteSettings(_Section):
    """Which inbound messages go where. Empty criteria match everything (a catch-all)."""

    to: list[str] = Field(default_factory=list)
    keyword: str | None = None
    sender_prefixes: list[str] = Field(default_factory=list)
    emails: list[str] = Field(default_factory=list)
    webhooks: list[str] = Field(default_factory=list)


class InboundSettings(_Section):
    """Inbound SMS: sources, short codes, reply scripts, forwarding targets and routes."""

    sources: dict[str, InboundSourceSettings] = Field(default_factory=dict)
    shortcodes: dict[str, ShortCodeSettings] = Field(default_factory=dict)
    reply_scripts: list[ReplyScriptSettings] = Field(default_factory=list)
    webhooks: dict[str, WebhookSettings] = Field(default_factory=dict)
    routes: list[RouteSettings] = Field(default_factory=list)
    dedup_window_without_id: float = Field(600.0, ge=0)
    answer_cache_size: int = Field(20000, ge=0)
    reply_budget: float = Field(5.0, gt=0)
    forward_retry_period: float = Field(86400.0, gt=0)
    forward_retry_base: float = Field(5.0, gt=0)
    forward_retry_max: float = Field(1800.0, gt=0)
    egress_allowed_networks: NetworkList = Field(default_factory=list)
    reply_account: str | None = None
    reply_domain: str = "localhost"


class StoreSettings(_Section):
    url: str = "sqlite:///sms-bridge.sqlite3"
    busy_timeout: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(
                "unsupported store URL; use sqlite:///PATH, "
                "postgresql://USER@HOST:PORT/DATABASE or postgres://USER@HOST:PORT/DATABASE"
            )
        return value


class DispatcherSettings(_Section):
    """How the outbox is drained: polling, leases, retries."""

    poll_interval: float = Field(1.0, gt=0)
    batch_size: int = Field(200, ge=1)
    lease_seconds: float = Field(60.0, gt=0)
    retry_base: float = Field(2.0, gt=0)
    retry_max: float = Field(600.0, gt=0)
    give_up_after: float = Field(86400.0, gt=0)


class MailSettings(_Section):
    """Outgoing mail (bounces, ``reply_to_email`` answers) through a smarthost."""

    smarthost: str | None = None
    smarthost_port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    username: str | None = None
    password: SecretStr | None = None
    from_address: str = "sms-bridge@localhost"
    timeout: float = Field(30.0, gt=0)
    bounces: bool = True


UpstreamKind = str


class UpstreamSettings(_Section):
    """One SMS provider endpoint. ``kind`` names a registered provider module."""

    kind: UpstreamKind = "dryrun"
    base_url: str | None = None
    backup_url: str | None = None
    login: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    client_id: str | None = None
    callback_url: str | None = None
    originator: str | None = None
    concurrency: int = Field(8, ge=1, le=1024)
    rate_per_second: float = Field(0.0, ge=0)
    batch_size: int | None = Field(None, ge=1)
    timeout: float = Field(15.0, gt=0)
    status_poll_interval: float = Field(60.0, ge=0)
    status_poll_max: float = Field(259200.0, gt=0)
    inbound_poll_interval: float = Field(0.0, ge=0)


class AccountSettings(_Section):
    """A sender of mail: which login it uses, where its SMS go and what it may do."""

    password: SecretStr
    upstream: str = "dryrun"
    fallback_upstreams: list[str] = Field(default_factory=list)
    originator: str | None = None
    allowed_senders: list[str] = Field(default_factory=list)
    allowed_networks: NetworkList = Field(default_factory=list)
    allowed_prefixes: list[str] = Field(default_factory=list)
    encoding: Literal["unicode", "transliterate"] = "unicode"
    max_parts: int = Field(255, ge=1, le=255)
    mail_rate_per_minute: int = Field(100, ge=0)
    trim_signature: bool = False
    trim_quoted: bool = False
    legacy_charset: Charset = "windows-1251"

    @field_validator("allowed_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.isdigit():
                raise ValueError(f"{item!r}: a prefix is digits only, without '+'")
        return value


DEMO_LOGIN = "demo"


class Settings(BaseSettings):
    """The whole configuration of one bridge process."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )
    _toml_file: ClassVar[Path | None] = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    mail: MailSettings = Field(default_factory=MailSettings)
    inbound: InboundSettings = Field(default_factory=InboundSettings)
    upstreams: dict[str, UpstreamSettings] = Field(default_factory=dict)
    accounts: dict[str, AccountSettings] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        from bridge.upstreams import registry

        # The embedded defaults: the ``dryrun`` upstream always exists unless redefined, and
        # the ``demo`` account (password ``demo``) only while no account and no upstream is
        # configured at all — a real configuration never keeps it by accident.
        if not self.accounts and not self.upstreams:
            self.accounts[DEMO_LOGIN] = AccountSettings(password=SecretStr("demo"),
                                                        upstream="dryrun")
        self.upstreams.setdefault("dryrun", UpstreamSettings(kind="dryrun"))

        for name, upstream in self.upstreams.items():
            if not _NAME.match(name):
                raise ValueError(f"upstreams.{name}: names are letters, digits, '_', '.', '-'")
            if upstream.kind not in registry.kinds():
                raise ValueError(
                    f"upstreams.{name}.kind: unknown provider {upstream.kind!r} "
                    f"(known: {', '.join(sorted(registry.kinds()))})"
                )
            registry.validate(name, upstream)
        for login, account in self.accounts.items():
            if login.lower() == "multi":
                raise ValueError("accounts.multi: 'multi' is the v2 address, not a login")
            if not _NAME.match(login) or login.isdigit():
                raise ValueError(f"accounts.{login}: a login is letters, digits, '_', '.', '-'")
            for key, name in [("upstream", account.upstream)] + [
                ("fallback_upstreams", n) for n in account.fallback_upstreams
            ]:
                if name not in self.upstreams:
                    raise ValueError(f"accounts.{login}.{key}: no upstream named {name!r}")
        inbound = self.inbound
        for name, source in inbound.sources.items():
            if source.dlr_format not in registry.DLR_FORMATS:
                raise ValueError(
                    f"inbound.sources.{name}.dlr_format: unknown format {source.dlr_format!r} "
                    f"(known: {', '.join(sorted(registry.DLR_FORMATS))})"
                )
        for index, route in enumerate(inbound.routes):
            for hook in route.webhooks:
                if hook not in inbound.webhooks:
                    raise ValueError(f"inbound.routes.{index}.webhooks: no webhook named {hook!r}")
        for index, script in enumerate(inbound.reply_scripts):
            if script.shortcode not in inbound.shortcodes:
                raise ValueError(
                    f"inbound.reply_scripts.{index}.shortcode: no short code {script.shortcode!r}"
                    " in inbound.shortcodes"
                )
        if inbound.reply_account is not None and self.account(inbound.reply_account) is None:
            raise ValueError(f"inbound.reply_account: no account named {inbound.reply_account!r}")
        return self

    def account(self, login: str) -> AccountSettings | None:
        """Logins are case-insensitive, like e-mail local parts in practice."""
        return self._accounts_ci().get(login.lower())

    def _accounts_ci(self) -> dict[str, AccountSettings]:
        return {k.lower(): v for k, v in self.accounts.items()}

    def canonical_login(self, login: str) -> str:
        for key in self.accounts:
            if key.lower() == login.lower():
                return key
        return login


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings; raises ``pydantic.ValidationError`` naming each bad key."""
    path = Path(config_file) if config_file else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"configuration file {path} does not exist")

    class _Loaded(Settings):
        _toml_file: ClassVar[Path | None] = path

    return _Loaded(**overrides)


_SECRET_MASK = "********"


def _secrets(value: Any) -> set[str]:
    """Every secret value in a settings tree."""
    if isinstance(value, SecretStr):
        return {value.get_secret_value()}
    if isinstance(value, BaseModel):
        return set().union(*(_secrets(getattr(value, k)) for k in type(value).model_fields))
    if isinstance(value, dict | list):
        return set().union(*(_secrets(v) for v in (value.values() if isinstance(value, dict)
                                                     else value)))
    return set()


def redact_url(url: str, secrets: set[str] | frozenset[str] = frozenset()) -> str:
    """``url`` without the password of its user info (``postgresql://bridge:***@db/x``)
    and without any of ``secrets`` (a source secret in a callback URL's path)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            userinfo, _, host = authority.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            authority = f"{user}:{_SECRET_MASK}@{host}" if colon else f"{user}@{host}"
        url = f"{scheme}{sep}{authority}{slash}{path}"
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            url = url.replace(secret, _SECRET_MASK)
    return url


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration with every secret replaced by a mask (``check-config``);
    URLs lose their passwords and any secret written into them."""
    secrets = frozenset(_secrets(settings))

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return _SECRET_MASK
        if isinstance(value, BaseModel):
            return {k: redact_url(v, secrets) if k.endswith("url") and isinstance(v, str)
                    else walk(v)
                    for k, v in ((k, getattr(value, k)) for k in type(value).model_fields)}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return {k: walk(v) for k, v in ((k, getattr(settings, k)) for k in Settings.model_fields)}
