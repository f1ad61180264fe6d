"""Settings: one validated model built at start from a TOML file and ``BRIDGE_*`` variables.

Sources, strongest first: keyword arguments (tests), environment variables ``BRIDGE_…``
(nested keys joined with ``__``, e.g. ``BRIDGE_SMTP__PORT=2626``), the TOML file named by
``--config`` or ``BRIDGE_CONFIG``, then the embedded defaults. The embedded defaults need no
file and no credentials: SQLite in the working directory, SMTP on 127.0.0.1:2525, HTTP on
127.0.0.1:8080, a ``demo`` account (password ``demo``) routed to the ``dryrun`` upstream and
a ``demo`` inbound source (secret ``demo``, loopback clients only), whose URL ``serve`` logs.

Every setting here is documented in ``config/sms-bridge.example.toml`` and the README.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# One redactor for the whole bridge; ``redact_url`` stays importable from here.
from bridge.redact import MASK as _SECRET_MASK
from bridge.redact import redact_url as redact_url
from bridge.upstreams.config import UpstreamSettings as UpstreamSettings
from bridge.upstreams.devino.settings import DevinoRestSettings, DevinoSoapSettings
from bridge.upstreams.dryrun.settings import DryRunSettings
from bridge.upstreams.kcell.settings import KcellSettings
from bridge.upstreams.smpp.settings import SmppSettings
from bridge.upstreams.smsc.settings import SmscSettings
from bridge.upstreams.smstraffic.settings import (
    SmsTrafficSoapSettings,
    SmsTrafficV1Settings,
    SmsTrafficV2Settings,
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
    from urllib.parse import urlsplit

    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    # Before urlsplit, which silently drops tabs and line breaks.
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain spaces, line breaks or control characters")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number 0-65535)
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    if not parts.hostname:
        raise ValueError("must name a host")
    return value


def _check_egress_networks(value: list[str]) -> list[str]:
    from bridge.relays.egress import parse_network

    for item in value:
        parse_network(item)  # the parsing the egress guard does at serve
    return value


def _check_keyword(value: str | None) -> str | None:
    if value is not None and any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("a keyword is one word: no spaces, line breaks or control characters")
    return value


# An addr-spec (RFC 5322 §3.4.1) as SMTP sends it without SMTPUTF8: dot-atom local part,
# host name domain. No quoted local parts, address literals, spaces or line breaks: one
# of those in a route would go into RCPT TO and the To: header of every forwarded SMS.
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                      r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")


def _check_address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"{value!r} is not an e-mail address (local@domain, ASCII, without "
                         "spaces, brackets or line breaks)")
    return value


def _check_signing_secret(value: SecretStr | None) -> SecretStr | None:
    from bridge.relays.signing import check_secret

    if value is not None:
        check_secret(value.get_secret_value())
    return value


NetworkList = Annotated[list[str], AfterValidator(_check_networks)]
EgressNetworkList = Annotated[list[str], AfterValidator(_check_egress_networks)]
Charset = Annotated[str, AfterValidator(_check_charset)]
HttpUrlText = Annotated[str, AfterValidator(_check_http_url)]
Keyword = Annotated[str | None, AfterValidator(_check_keyword)]
MailAddress = Annotated[str, AfterValidator(_check_address)]
SigningSecret = Annotated[SecretStr, AfterValidator(_check_signing_secret)]


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
    # Failed AUTH across connections: more than these within the window answer 454 4.7.0.
    auth_failure_window: float = Field(60.0, gt=0)
    auth_failures_per_ip: int = Field(10, ge=1)
    auth_failures_per_login: int = Field(10, ge=1)
    max_message_size: int = Field(10 * 1024 * 1024, ge=1024)
    max_line_length: int = Field(8192, ge=1001)
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    timeout: float = Field(60.0, gt=0)
    first_command_timeout: float = Field(10.0, gt=0)
    store_deadline: float = Field(30.0, gt=0)
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
    # The request line (method, target, version): the longest SMS the spec allows
    # (17,085 characters) sent by GET in windows-1251, percent-encoded, takes about 52 KB.
    max_request_line: int = Field(64 * 1024, ge=8192, le=1024 * 1024)
    admin_token: SecretStr | None = None
    # Operators' own sign-ins to the console (/admin/), name = password; the audit log
    # names them. The admin token signs in as "admin". Without admin_token no console.
    operators: dict[str, SecretStr] = Field(default_factory=dict)


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
    keyword: Keyword = None
    url: HttpUrlText
    method: Literal["GET", "POST"] = "GET"
    timeout: float = Field(3.0, gt=0)
    secret: SigningSecret | None = None


class WebhookSettings(_Section):
    url: HttpUrlText
    secret: SigningSecret
    timeout: float = Field(10.0, gt=0)


class RouteSettings(_Section):
    """Which inbound messages go where. Empty criteria match everything (a catch-all)."""

    to: list[str] = Field(default_factory=list)
    keyword: Keyword = None
    sender_prefixes: list[str] = Field(default_factory=list)
    emails: list[MailAddress] = Field(default_factory=list)
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
    forward_concurrency_per_target: int = Field(4, ge=1, le=256)
    egress_allowed_networks: EgressNetworkList = Field(default_factory=list)
    egress_allowed_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list)
    reply_account: str | None = None
    reply_domain: str = "localhost"
    # A customer's SMS mails (per provider, number texted, phone and mailbox) form one thread
    # until the conversation has been idle this long; 0: every SMS mail stands alone.
    thread_idle: float = Field(30 * 86400.0, ge=0)

    @field_validator("reply_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        _check_address(f"reply@{value}")  # it goes into the Reply-To: of every forward
        return value

    @model_validator(mode="after")
    def _http_ports(self) -> InboundSettings:
        """A URL on a well-known non-HTTP port would be refused at every call: refuse it
        at start instead, unless the port is opened."""
        from urllib.parse import urlsplit

        from bridge.relays.egress import BLOCKED_PORTS

        urls = [(f"webhooks.{name}.url", hook.url) for name, hook in self.webhooks.items()]
        urls += [(f"reply_scripts.{i}.url", s.url) for i, s in enumerate(self.reply_scripts)]
        for key, url in urls:
            port = urlsplit(url).port
            if port in BLOCKED_PORTS and port not in self.egress_allowed_ports:
                raise ValueError(f"{key}: port {port} ({BLOCKED_PORTS[port]}) is not an HTTP "
                                 "port; open it with egress_allowed_ports if it really is one")
        return self


class StoreSettings(_Section):
    url: str = "sqlite:///sms-bridge.sqlite3"
    busy_timeout: float = Field(5.0, gt=0)
    # Days the operators' console keeps each mail as received and each provider request and
    # answer (redacted, the first 64 KiB of each); 0 keeps none.
    trace_retention_days: float = Field(30.0, ge=0)

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


class WorkersSettings(_Section):
    """``serve --workers N``: restarting workers that exit."""

    restart_delay: float = Field(1.0, gt=0)  # doubled for each crash in a row, up to 60 s
    max_restarts: int = Field(5, ge=0)  # crashes in a row before serve gives up (exit 1)


class MailSettings(_Section):
    """Outgoing mail (bounces, ``reply_to_email`` answers, forwarded SMS) through a
    smarthost. ``timeout`` is the wait for the reply to the end of the data: RFC 5321
    §4.5.3.2.6 gives the server 10 minutes; a client that gives up earlier makes the
    server deliver a mail the client then sends again. ``command_timeout`` bounds the
    connection, TLS, greeting, EHLO, AUTH, MAIL and RCPT together."""

    smarthost: str | None = None
    smarthost_port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    username: str | None = None
    password: SecretStr | None = None
    from_address: MailAddress = "sms-bridge@localhost"
    timeout: float = Field(600.0, gt=0)
    command_timeout: float = Field(60.0, gt=0)
    bounces: bool = True


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
    # Lines that start a signature (case-insensitive prefixes, e.g. "С уважением"): from such
    # a line to the next quote, the agent's text is dropped. Empty: no closing is trimmed.
    signature_starts: list[str] = Field(default_factory=list)
    legacy_charset: Charset = "windows-1251"
    # A message an earlier request may have sent, through an upstream that can neither
    # refuse a repeated idempotency key nor be asked whether it took the SMS: "resend"
    # risks at most one extra copy; "hold" (at most once, for codes) sends nothing more,
    # marks it ambiguous and tells the sender, until `sms-bridge resolve`.
    ambiguous: Literal["resend", "hold"] = "resend"

    @field_validator("allowed_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.isdigit():
                raise ValueError(f"{item!r}: a prefix is digits only, without '+'")
        return value


# ``[upstreams.NAME]``: each provider package's own model, chosen by ``kind`` (``dryrun``
# when the table names none).
AnyUpstreamSettings = Annotated[
    DryRunSettings | SmsTrafficV1Settings | SmsTrafficV2Settings | SmsTrafficSoapSettings
    | SmppSettings | KcellSettings | DevinoRestSettings | DevinoSoapSettings | SmscSettings,
    Field(discriminator="kind"),
]
_UPSTREAM_MODELS: dict[str, type[UpstreamSettings]] = {
    model.model_fields["kind"].default: model
    for model in get_args(get_args(AnyUpstreamSettings)[0])}
UPSTREAM_KINDS = frozenset(_UPSTREAM_MODELS)
# Every key some kind has. Before each kind had its own model, one model held them all, so a
# table could carry another kind's key (an ``api_key`` under ``smstraffic_v1``): such a key is
# still accepted, and ignored as it always was; a key no kind has is refused.
_UPSTREAM_KEYS = frozenset().union(*(model.model_fields for model in _UPSTREAM_MODELS.values()))
_UPSTREAM = TypeAdapter[UpstreamSettings](AnyUpstreamSettings)

# Formats of delivery-report callbacks (``[inbound.sources.X] dlr_format``); their parsers
# are named in ``bridge/upstreams/registry.py``.
DLR_FORMATS = frozenset({"smstraffic", "kcell"})


def _upstream_table(name: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """A table with its ``kind`` (``dryrun`` when it names none), without the keys only other
    kinds have (see ``_UPSTREAM_KEYS``); an unknown kind is named with its table."""
    kind = table.get("kind", "dryrun")
    if kind not in UPSTREAM_KINDS:
        raise ValueError(f"upstreams.{name}.kind: unknown provider {kind!r} "
                         f"(known: {', '.join(sorted(UPSTREAM_KINDS))})")
    own = _UPSTREAM_MODELS[kind].model_fields
    return {key: value for key, value in {**table, "kind": kind}.items()
            if key in own or key not in _UPSTREAM_KEYS}


def upstream_settings(**values: Any) -> UpstreamSettings:
    """One ``[upstreams.NAME]`` table's model, of the class its ``kind`` names."""
    return _UPSTREAM.validate_python(_upstream_table("NAME", values))


DEMO_LOGIN = "demo"
DEMO_SOURCE = "demo"  # its secret is "demo" too: /in/demo/demo/mo
# The demo source's secret is printed and documented: only this machine may use it, even
# when http.host opens the port to the network.
DEMO_SOURCE_NETWORKS = ("127.0.0.0/8", "::1/128")


class Settings(BaseSettings):
    """The whole configuration of one bridge process."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )
    _toml_file: ClassVar[Path | None] = None
    _embedded_demo: bool = PrivateAttr(False)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    workers: WorkersSettings = Field(default_factory=WorkersSettings)
    mail: MailSettings = Field(default_factory=MailSettings)
    inbound: InboundSettings = Field(default_factory=InboundSettings)
    upstreams: dict[str, AnyUpstreamSettings] = Field(default_factory=dict)
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

    @field_validator("upstreams", mode="before")
    @classmethod
    def _upstream_kinds(cls, value: Any) -> Any:
        """Each table as its kind's model reads it (``_upstream_table``); the union alone
        would not say which table names an unknown kind."""
        if not isinstance(value, Mapping):
            return value
        return {name: _upstream_table(str(name), table) if isinstance(table, Mapping) else table
                for name, table in value.items()}

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        # The embedded defaults: the ``dryrun`` upstream always exists unless redefined, and
        # the ``demo`` account (password ``demo``) only while no account and no upstream is
        # configured at all — a real configuration never keeps it by accident. The ``demo``
        # source likewise, and only while no source is configured either.
        if not self.accounts and not self.upstreams:
            self.accounts[DEMO_LOGIN] = AccountSettings(password=SecretStr("demo"),
                                                        upstream="dryrun")
            if not self.inbound.sources:
                self.inbound.sources[DEMO_SOURCE] = InboundSourceSettings(
                    secret=SecretStr(DEMO_SOURCE), allowed_networks=list(DEMO_SOURCE_NETWORKS))
                self._embedded_demo = True
        self.upstreams.setdefault("dryrun", DryRunSettings())

        for name, upstream in self.upstreams.items():
            if not _NAME.match(name):
                raise ValueError(f"upstreams.{name}: names are letters, digits, '_', '.', '-'")
            upstream.check(name)
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
            if source.dlr_format not in DLR_FORMATS:
                raise ValueError(
                    f"inbound.sources.{name}.dlr_format: unknown format {source.dlr_format!r} "
                    f"(known: {', '.join(sorted(DLR_FORMATS))})"
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

    @property
    def embedded_demo(self) -> bool:
        """True when the bridge runs on the embedded demo account and demo source (nothing
        of accounts, upstreams and sources configured): ``serve`` says how to try them."""
        return self._embedded_demo

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


# BRIDGE_… variables that are not settings: the CLI's configuration file, and the test
# suite's PostgreSQL server (BRIDGE_TEST_POSTGRES).
_NOT_SETTINGS = re.compile(r"BRIDGE_(CONFIG|TEST_.*)")


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``BRIDGE_…`` variable that names no setting. pydantic-settings
    reads the variables of known sections only (a misspelt key inside a known section is
    refused), so ``BRIDGE_SMPT__PORT=2626`` would leave the SMTP port at its default
    without a word. Each warning names the variable and the closest known name."""
    import difflib
    import typing

    def is_section(name: str) -> bool:
        annotation = Settings.model_fields[name].annotation
        return typing.get_origin(annotation) is dict or (
            isinstance(annotation, type) and issubclass(annotation, BaseModel))

    known = {name.upper(): name for name in Settings.model_fields}
    warnings = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("BRIDGE_") or _NOT_SETTINGS.fullmatch(upper):
            continue
        head, nested, _ = upper.removeprefix("BRIDGE_").partition("__")
        if head in known:
            continue
        what = "setting section" if nested else "setting"
        close = difflib.get_close_matches(head, sorted(known), n=1)
        if close:
            spelled = f"BRIDGE_{close[0]}__…" if is_section(known[close[0]]) else \
                f"BRIDGE_{close[0]}"
            hint = f"did you mean {spelled}?"
        else:
            hint = "known: " + ", ".join(sorted(known.values()))
        warnings.append(f"{variable} is ignored: no {what} {head.lower()!r} ({hint})")
    return warnings


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
