"""Standard Webhooks signatures (bridge.relays.signing)."""

from __future__ import annotations

import base64

import pytest

from bridge.relays.signing import signature, signature_headers, verify

# Test vector of the standard-webhooks reference libraries.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def vector_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": EXPECTED,
    }
    headers.update(overrides)
    return headers


def test_reference_vector() -> None:
    assert signature(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED


def test_reference_vector_verifies() -> None:
    assert verify(SECRET, vector_headers(), BODY, now=TIMESTAMP)


def test_signature_headers_round_trip() -> None:
    body = "привет".encode()
    headers = signature_headers("whsec_" + base64.b64encode(b"k" * 24).decode(), "msg_1", body,
                                now=1_700_000_000.7)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert verify(secret, headers, body, now=1_700_000_010)
    assert not verify("whsec_" + base64.b64encode(b"K" * 24).decode(), headers, body,
                      now=1_700_000_010)


def test_reference_vector_through_signature_headers() -> None:
    assert signature_headers(SECRET, MSG_ID, BODY, now=TIMESTAMP) == vector_headers()


def test_signature_headers_default_now_verifies() -> None:
    headers = signature_headers(SECRET, "msg_now", BODY)
    assert verify(SECRET, headers, BODY)


def test_raw_secret_without_prefix_is_utf8_bytes() -> None:
    raw = "тайна-secret"
    encoded = "whsec_" + base64.b64encode(raw.encode()).decode()
    assert signature(raw, MSG_ID, TIMESTAMP, BODY) == signature(encoded, MSG_ID, TIMESTAMP, BODY)
    assert signature(raw, MSG_ID, TIMESTAMP, BODY) != EXPECTED


def test_header_names_are_case_insensitive() -> None:
    headers = {key.title(): value for key, value in vector_headers().items()}
    assert verify(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (vector_headers(), b'{"test": 2432232315}'),  # tampered body
        (vector_headers(), BODY + b" "),
        (vector_headers(**{"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJeK"}), BODY),  # tampered id
        (vector_headers(**{"webhook-timestamp": str(TIMESTAMP + 1)}), BODY),  # tampered time
        (vector_headers(**{"webhook-signature": "v2," + EXPECTED[3:]}), BODY),  # other version
        (vector_headers(**{"webhook-signature": EXPECTED[3:]}), BODY),  # no version
        (vector_headers(**{"webhook-signature": EXPECTED[:-2] + "A="}), BODY),
    ],
)
def test_tampering_fails(headers: dict[str, str], body: bytes) -> None:
    assert not verify(SECRET, headers, body, now=TIMESTAMP)


def test_wrong_secret_fails() -> None:
    assert not verify("whsec_" + base64.b64encode(b"other").decode(), vector_headers(), BODY,
                      now=TIMESTAMP)


def test_old_timestamp_fails() -> None:
    assert verify(SECRET, vector_headers(), BODY, now=TIMESTAMP + 300)
    assert not verify(SECRET, vector_headers(), BODY, now=TIMESTAMP + 301)
    assert not verify(SECRET, vector_headers(), BODY)  # real clock: years later
    assert verify(SECRET, vector_headers(), BODY, now=TIMESTAMP + 3000, tolerance=3600)


def test_future_timestamp_fails() -> None:
    assert not verify(SECRET, vector_headers(), BODY, now=TIMESTAMP - 301)


def test_one_valid_signature_among_several_passes() -> None:
    other = signature("whsec_" + base64.b64encode(b"old key").decode(), MSG_ID, TIMESTAMP, BODY)
    header = f"v1,bm90IGl0 {other} v2,abc {EXPECTED}"
    assert verify(SECRET, vector_headers(**{"webhook-signature": header}), BODY, now=TIMESTAMP)
    assert not verify(SECRET, vector_headers(**{"webhook-signature": f"v1,bm90IGl0 {other}"}),
                      BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "overrides",
    [
        {"webhook-signature": "v1,подпись"},
        {"webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\u00e9"},
        {"webhook-signature": "v1,\udcff\udcfe"},  # surrogateescape-decoded garbage
        {"webhook-id": "msg_ü\udcff"},
        {"webhook-timestamp": "١٦١٤٢٦٥٣٣٠"},  # Arabic-Indic digits: int() would accept them
        {"webhook-timestamp": " 1614265330"},
        {"webhook-timestamp": "1614265330.0"},
        {"webhook-timestamp": ""},
        {"webhook-signature": ""},
        {"webhook-id": ""},
    ],
)
def test_malformed_values_are_false_not_errors(overrides: dict[str, str]) -> None:
    assert verify(SECRET, vector_headers(**overrides), BODY, now=TIMESTAMP) is False


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_fails(missing: str) -> None:
    headers = vector_headers()
    del headers[missing]
    assert not verify(SECRET, headers, BODY, now=TIMESTAMP)


def test_bad_whsec_secret_is_a_config_error() -> None:
    with pytest.raises(ValueError):
        signature("whsec_not*base64", MSG_ID, TIMESTAMP, BODY)


@pytest.mark.parametrize("msg_id", ["", "msg 1", "msg\r\nX-Evil: 1", "msg.1", "msg_é"])
def test_signature_headers_refuses_unsafe_ids(msg_id: str) -> None:
    with pytest.raises(ValueError):
        signature_headers(SECRET, msg_id, BODY, now=TIMESTAMP)
