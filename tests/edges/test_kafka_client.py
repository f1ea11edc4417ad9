"""client_kwargs: KAFKA_* security variables to aiokafka kwargs, refusing bad values by name, never leaking secrets."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from stream_app.domain.errors import ConfigError
from stream_app.edges.kafka_client import client_kwargs

# A throwaway self-signed CA (no key kept): only needs to load as a trust anchor.
TEST_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBkTCCATegAwIBAgIUZQB1/DCraRZMZYnh2tPpXTt1p/QwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSc3RyZWFtLWFwcCB0ZXN0IENBMCAXDTI2MTEyNTE0MTAzNloY
DzIxMjYxMTAxMTQxMDM2WjAdMRswGQYDVQQDDBJzdHJlYW0tYXBwIHRlc3QgQ0Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAS2uwF8FWLZS130hWZpS08bEDh9RuRW
TOZvGL6V9Y2r6XyQInUjE39vvG9FF39slGr243z8nMo/dAfUKDzIEF2No1MwUTAd
BgNVHQ4EFgQUreMo5Kq7R0WUK2aXgZP9KV6Yw70wHwYDVR0jBBgwFoAUreMo5Kq7
R0WUK2aXgZP9KV6Yw70wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF
AiEA3/b3HjGAttfuJNcssB/smHBNO0S7mEJQa5x9SQhy5v8CIGzTp3axDvQ0bOH6
c+3WOUiJvo1/9RVNmOjIvRmOl7WI
-----END CERTIFICATE-----
"""
SECRET = "s3cr3t-Pa55"


@pytest.fixture
def cafile(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text(TEST_CA_PEM)
    return str(path)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"security_protocol": "PLAINTEXT"}),
        ({"KAFKA_SECURITY_PROTOCOL": ""}, {"security_protocol": "PLAINTEXT"}),
        ({"KAFKA_SECURITY_PROTOCOL": "plaintext"}, {"security_protocol": "PLAINTEXT"}),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "u",
                "sasl_plain_password": "p",
            },
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": "scram-sha-512",
                "KAFKA_SASL_USERNAME": "svc",
                "KAFKA_SASL_PASSWORD": "pw",
            },
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "svc",
                "sasl_plain_password": "pw",
            },
        ),
    ],
)
def test_plaintext_and_sasl_kwargs(env: dict[str, str], expected: dict[str, str]) -> None:
    assert dict(client_kwargs(env)) == expected


def test_ssl_uses_the_ca_file(cafile: str) -> None:
    kwargs = client_kwargs({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": cafile})
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # The only trust anchor loaded is our test CA.
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "stream-app test CA"),),)]


def test_sasl_ssl_has_both(cafile: str) -> None:
    kwargs = client_kwargs(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD": SECRET,
            "KAFKA_SSL_CAFILE": cafile,
        }
    )
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kwargs["sasl_plain_password"] == SECRET
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_ssl_without_ca_file_uses_system_trust_store() -> None:
    kwargs = client_kwargs({"KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_password_never_in_repr_or_str() -> None:
    kwargs = client_kwargs(
        {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": SECRET}
    )
    assert SECRET not in repr(kwargs)
    assert SECRET not in str(kwargs)
    assert SECRET not in f"{kwargs}"
    assert "'sasl_plain_password': '***'" in repr(kwargs)
    # Still a plain mapping for aiokafka: ** unpacking gives the real value.
    assert {**kwargs}["sasl_plain_password"] == SECRET


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI"},
            "KAFKA_SASL_MECHANISM",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_PASSWORD": SECRET}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SASL_PASSWORD": SECRET}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SSL_CAFILE": "/etc/hosts"}, "KAFKA_SSL_CAFILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ],
)
def test_bad_values_are_refused_by_name_without_the_secret(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable) as caught:
        client_kwargs(env)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


def test_a_file_that_is_not_a_ca_bundle_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"KAFKA_SSL_CAFILE .* is not a usable CA bundle"):
        client_kwargs({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(bogus)})
