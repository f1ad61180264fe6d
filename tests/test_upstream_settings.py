"""Upstream settings: each provider package owns the model of its ``kind``, the bridge's
settings compose them as one union; what loaded before still loads; providers know no
intake, no outbox and no configuration file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.settings import DLR_FORMATS, UPSTREAM_KINDS, load_settings, upstream_settings
from bridge.upstreams import registry
from bridge.upstreams.kcell.settings import KcellSettings
from bridge.upstreams.smsc.settings import SmscSettings
from bridge.upstreams.smstraffic.settings import SmsTrafficV1Settings

ROOT = Path(__file__).resolve().parent.parent

# The keys one model held for every kind before each kind had its own, with a value each
# accepts: a table of any kind carrying any of them loaded then, and loads now.
FLAT_KEYS: dict[str, Any] = {
    "base_url": "http://127.0.0.1:1", "backup_url": "http://127.0.0.1:2", "login": "acme",
    "password": "secret", "api_key": "1/key", "client_id": "acme",
    "callback_url": "https://bridge.example/cb", "status_url": "https://smsc.ru/sys/status.php",
    "originator": "ACME", "concurrency": 4, "rate_per_second": 5.0, "batch_size": 10,
    "timeout": 5.0, "status_poll_interval": 30.0, "status_poll_max": 3600.0,
    "inbound_poll_interval": 10.0, "bind_mode": "transmitter", "window": 5,
    "enquire_link_interval": 30.0, "link_dead_after": 120.0, "tls_ca_file": "/etc/ssl/ca.pem",
}
# What each kind needs to load at all.
MINIMAL: dict[str, dict[str, Any]] = {
    "dryrun": {},
    "smstraffic_v1": {"base_url": "http://h", "login": "l", "password": "p"},
    "smstraffic_v2": {"base_url": "http://h", "api_key": "1/k"},
    "smstraffic_soap": {"base_url": "http://h", "login": "l", "password": "p"},
    "smpp": {"base_url": "smpp://127.0.0.1:2775", "login": "l", "password": "p"},
    "kcell": {"base_url": "http://h", "login": "l", "password": "p", "client_id": "c"},
    "devino_rest": {"base_url": "http://h", "login": "l", "password": "p"},
    "devino_soap": {"base_url": "http://h", "login": "l", "password": "p"},
    "smsc": {"base_url": "http://h", "login": "l", "password": "p"},
}


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_the_example_configurations_load(path: Path) -> None:
    settings = load_settings(path)
    for name, upstream in settings.upstreams.items():
        assert type(upstream).model_fields["kind"].default == upstream.kind, name


def test_the_example_gives_each_upstream_its_kinds_model() -> None:
    settings = load_settings(ROOT / "config" / "sms-bridge.example.toml")
    assert isinstance(settings.upstreams["smstraffic"], SmsTrafficV1Settings)
    assert {type(u).__name__ for u in settings.upstreams.values()} >= {
        "DryRunSettings", "SmsTrafficV1Settings", "SmsTrafficV2Settings", "SmppSettings"}


def test_every_kind_is_known_to_the_registry_and_the_settings() -> None:
    assert UPSTREAM_KINDS == registry.kinds() == set(MINIMAL)
    assert DLR_FORMATS == set(registry.DLR_FORMATS)


@pytest.mark.parametrize("kind", sorted(MINIMAL))
@pytest.mark.parametrize("key", sorted(FLAT_KEYS))
def test_a_key_any_kind_took_before_still_loads(kind: str, key: str) -> None:
    table = {**MINIMAL[kind], "kind": kind}
    value = FLAT_KEYS[key]
    if kind == "smpp" and key == "backup_url":
        value = "smpp://127.0.0.1:2"  # an smpp table's hosts are smpp:// URLs
    table.setdefault(key, value)
    settings = load_settings(None, upstreams={"p": table},
                             accounts={"a": {"password": "x", "upstream": "p"}})
    upstream = settings.upstreams["p"]
    assert upstream.kind == kind
    if key in type(upstream).model_fields:
        assert getattr(upstream, key) is not None


def test_the_test_suites_provider_configurations_load() -> None:
    """The tables the provider tests build (tests/test_upstream_*.py), as written there."""
    tables: list[dict[str, Any]] = [
        {"kind": "smstraffic_v1", "base_url": "http://127.0.0.1:1", "login": "acme",
         "password": "s3cret", "api_key": "77/key", "timeout": 2.0},
        {"kind": "smstraffic_v2", "base_url": "http://127.0.0.1:1", "login": "acme",
         "password": "s3cret", "api_key": "77/key", "timeout": 2.0},
        {"kind": "smstraffic_soap", "base_url": "http://127.0.0.1:1/soap.php", "login": "a",
         "password": "s", "api_key": "77/key"},
        {"kind": "kcell", "base_url": "http://127.0.0.1:1", "login": "acme", "password": "p",
         "client_id": "acme", "callback_url": "http://127.0.0.1:2/in/kcell/s/dlr"},
        {"kind": "devino_rest", "base_url": "http://127.0.0.1:1/rest", "login": "acme",
         "password": "a+b==13!", "client_id": "ACME", "timeout": 2.0},
        {"kind": "devino_soap", "base_url": "http://127.0.0.1:1", "login": "acme",
         "password": "s3cret", "timeout": 2.0},
        {"kind": "smsc", "base_url": "http://127.0.0.1:1", "login": "acme", "password": "pw",
         "status_url": "http://127.0.0.1:1/sys/status.php"},
        {"kind": "smpp", "base_url": "smpp://127.0.0.1:1", "login": "acme", "password": "pw",
         "enquire_link_interval": 0.2, "link_dead_after": 1.0, "timeout": 2.0},
        {"kind": "dryrun", "rate_per_second": 10},
        {"rate_per_second": 10},
    ]
    for table in tables:
        assert upstream_settings(**table).kind == table.get("kind", "dryrun")


def test_a_key_no_kind_has_is_refused_and_an_unknown_kind_named() -> None:
    with pytest.raises(ValidationError) as typo:
        load_settings(None, upstreams={"k": {**MINIMAL["kcell"], "kind": "kcell",
                                             "calback_url": "http://x"}})
    assert "calback_url" in str(typo.value)
    with pytest.raises(ValidationError) as unknown:
        load_settings(None, upstreams={"st": {"kind": "carrier-pigeon"}})
    assert "upstreams.st.kind" in str(unknown.value)


def test_each_kind_checks_its_own_keys() -> None:
    with pytest.raises(ValueError, match=r"upstreams\.k\.client_id is required"):
        KcellSettings(base_url="http://h", login="l", password="p").check("k")
    with pytest.raises(ValueError, match="status_url must be an absolute"):
        SmscSettings(base_url="http://h", login="l", password="p",
                     status_url="/sys/status.php").check("s")


def test_providers_import_no_settings_intake_or_outbox_and_settings_no_registry() -> None:
    """The layer map: a provider knows no configuration file, no intake and no outbox; the
    settings compose the providers' models without the registry (no import cycle)."""
    providers = ", ".join(sorted({target.partition(":")[0]
                                  for target in registry.PROVIDERS.values()}))
    script = (
        "import importlib, sys\n"
        f"for name in '{providers}'.split(', '):\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'bridge.settings'\n"
        "             or m.startswith(('bridge.inbound', 'bridge.outbox', 'bridge.store',\n"
        "                              'bridge.relays', 'bridge.smtp')))\n"
        "assert not bad, bad\n"
        "import bridge.settings\n"
        "assert 'bridge.upstreams.registry' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
