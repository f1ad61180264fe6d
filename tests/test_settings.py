"""Configuration: TOML + environment, validation messages, masked output, docs in step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from bridge.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "sms-bridge.example.toml"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=60,
        env={**clean, **(env or {})}, cwd=ROOT, check=False,
    )


def test_embedded_defaults_need_no_file() -> None:
    settings = load_settings(None)
    assert (settings.smtp.host, settings.smtp.port) == ("127.0.0.1", 2525)
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert settings.store.url == "sqlite:///sms-bridge.sqlite3"
    demo = settings.account("demo")
    assert demo is not None and demo.password.get_secret_value() == "demo"
    assert demo.upstream == "dryrun" and settings.upstreams["dryrun"].kind == "dryrun"
    assert demo.mail_rate_per_minute == 100


def test_example_config_loads_and_documents_every_setting() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.accounts["alerts"].fallback_upstreams == ["smstraffic_json"]
    text = EXAMPLE.read_text()

    def names(model: type[BaseModel]) -> set[str]:
        found = set(model.model_fields)
        for field in model.model_fields.values():
            annotation = field.annotation
            for candidate in getattr(annotation, "__args__", (annotation,)):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    found |= names(candidate)
        return found

    from bridge.settings import AccountSettings, UpstreamSettings

    missing = sorted(
        name for name in names(Settings) | names(AccountSettings) | names(UpstreamSettings)
        if name not in ("upstreams", "accounts") and f"{name} =" not in text
        and f"[{name}]" not in text and f".{name}." not in text and f".{name}]" not in text
    )
    assert missing == []


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[smtp]\nport = 2600\nhostname = 'from-file'\n")
    os.environ["BRIDGE_SMTP__PORT"] = "2626"
    try:
        settings = load_settings(config)
    finally:
        del os.environ["BRIDGE_SMTP__PORT"]
    assert settings.smtp.port == 2626 and settings.smtp.hostname == "from-file"


def test_validation_names_the_bad_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[smtp]\nport = "many"\n[accounts.x]\npassword = "p"\nupstream = "nope"\n')
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 2
    assert "smtp.port" in result.stderr
    with pytest.raises(ValidationError) as error:
        load_settings(None, accounts={"x": {"password": "p", "upstream": "nope"}})
    assert "accounts.x.upstream" in str(error.value)


def test_provider_credentials_are_required(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as error:
        load_settings(None, upstreams={"st": {"kind": "smstraffic_v1", "base_url": "http://h"}})
    assert "upstreams.st.login" in str(error.value)
    with pytest.raises(ValidationError) as unknown:
        load_settings(None, upstreams={"st": {"kind": "carrier-pigeon"}})
    assert "upstreams.st.kind" in str(unknown.value)


def test_missing_config_file_is_a_clear_error() -> None:
    result = run_cli("--config", "/nonexistent/bridge.toml", "check-config")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_check_config_masks_secrets() -> None:
    result = run_cli("--config", str(EXAMPLE), "check-config",
                     env={"BRIDGE_ACCOUNTS__ALERTS__PASSWORD": "env-secret-42"})
    assert result.returncode == 0, result.stderr
    for secret in ("change-me", "your-password", "your-secret-part", "env-secret-42"):
        assert secret not in result.stdout
    assert '"password": "demo"' not in result.stdout
    assert '"password": "********"' in result.stdout


def test_check_config_and_migrate_hide_passwords_and_secrets_in_urls(tmp_path: Path) -> None:
    """A PostgreSQL URL carries its password; a callback URL may carry a source secret in
    its path. Neither is printed."""
    config = tmp_path / "bridge.toml"
    config.write_text(f"""
[store]
url = "sqlite:///{tmp_path / 'store.sqlite3'}"
[inbound.sources.st]
secret = "path-secret-123"
[upstreams.k]
kind = "kcell"
base_url = "http://user:basic-pw@provider.example"
login = "acme"
password = "pw-456"
client_id = "acme-client"
callback_url = "https://bridge.example/in/st/path-secret-123/dlr"
""", encoding="utf-8")
    result = run_cli("--config", str(config), "check-config",
                     env={"BRIDGE_STORE__URL": "postgresql://bridge:pg-pass-789@db.example/x"})
    assert result.returncode == 0, result.stderr
    for secret in ("pg-pass-789", "basic-pw", "path-secret-123", "pw-456"):
        assert secret not in result.stdout
    assert '"url": "postgresql://bridge:********@db.example/x"' in result.stdout
    assert '"callback_url": "https://bridge.example/in/st/********/dlr"' in result.stdout
    migrated = run_cli("--config", str(config), "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "store sqlite:///" in migrated.stdout
