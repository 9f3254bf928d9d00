"""Settings.from_config: every OBDCR_* key, its default, and the error naming a wrong one."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from flask import Config

from flask_obdcr import ConfigurationError, Settings
from flask_obdcr.config import DEFAULTS, REQUIRED

ISSUER = "https://as.anybank.example"
DIRECTORY_JWKS = "https://keystore.openbankingtest.org.uk/keystore/openbanking.jwks"
REQUIRED_KEYS = ["OBDCR_ISSUER", "OBDCR_TRUSTED_DIRECTORIES", "OBDCR_TRANSPORT_CA_FILE"]


@pytest.fixture(scope="module")
def ca_file(ob_directory, tmp_path_factory) -> str:
    return ob_directory.write_transport_ca(tmp_path_factory.mktemp("config") / "ob-ca.pem")


@pytest.fixture
def config(ca_file) -> dict:
    """Only the required keys: everything else takes its default."""
    return {
        "OBDCR_ISSUER": ISSUER,
        "OBDCR_TRUSTED_DIRECTORIES": {"OpenBanking Ltd": DIRECTORY_JWKS},
        "OBDCR_TRANSPORT_CA_FILE": ca_file,
    }


def config_error(config: dict) -> str:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_config(config)
    assert type(excinfo.value) is ConfigurationError
    return str(excinfo.value)


def assert_names(message: str, key: str) -> None:
    """The message starts with the key (or ``KEY['entry']``) that is wrong."""
    assert re.match(rf"{re.escape(key)}(\[[^\]]+\])? ", message), message


# -- required keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_each_required_key_missing_is_named(config, key):
    del config[key]
    assert config_error(config) == (
        f"{key} must be set in the app config before init_app()"
        " (see the configuration table in the README)."
    )


def test_all_missing_required_keys_are_named_at_once():
    assert config_error({"OBDCR_AUDIENCES": []}) == (
        "OBDCR_ISSUER, OBDCR_TRUSTED_DIRECTORIES, OBDCR_TRANSPORT_CA_FILE must be set in the"
        " app config before init_app() (see the configuration table in the README)."
    )


# -- wrong values ----------------------------------------------------------------------------

WRONG = [
    # (key, value, id)
    ("OBDCR_ISSUER", "", "issuer-empty"),
    ("OBDCR_ISSUER", "   ", "issuer-blank"),
    ("OBDCR_ISSUER", None, "issuer-none"),
    ("OBDCR_ISSUER", 42, "issuer-int"),
    ("OBDCR_AUDIENCES", "https://as.anybank.example", "audiences-bare-string"),
    ("OBDCR_AUDIENCES", [""], "audiences-empty-entry"),
    ("OBDCR_AUDIENCES", [7], "audiences-int-entry"),
    ("OBDCR_SIGNING_ALGS", ["none"], "algs-none"),
    ("OBDCR_SIGNING_ALGS", ["HS256"], "algs-hs256"),
    ("OBDCR_SIGNING_ALGS", ["PS256", "HS512"], "algs-hs512-among-good"),
    ("OBDCR_SIGNING_ALGS", [], "algs-empty"),
    ("OBDCR_SIGNING_ALGS", "PS256", "algs-bare-string"),
    ("OBDCR_SIGNING_ALGS", ["ps256"], "algs-lowercase"),
    ("OBDCR_SIGNING_ALGS", ["EdDSA"], "algs-unknown"),
    ("OBDCR_TRUSTED_DIRECTORIES", {}, "directories-empty"),
    ("OBDCR_TRUSTED_DIRECTORIES", [DIRECTORY_JWKS], "directories-list"),
    ("OBDCR_TRUSTED_DIRECTORIES", DIRECTORY_JWKS, "directories-string"),
    ("OBDCR_TRUSTED_DIRECTORIES", None, "directories-none"),
    ("OBDCR_TRUSTED_DIRECTORIES", {"": DIRECTORY_JWKS}, "directories-empty-issuer"),
    ("OBDCR_TRUSTED_DIRECTORIES", {7: DIRECTORY_JWKS}, "directories-int-issuer"),
    ("OBDCR_JWKS_ALLOWED_HOSTS", "keystore.openbankingtest.org.uk", "hosts-bare-string"),
    ("OBDCR_JWKS_ALLOWED_HOSTS", [""], "hosts-empty-entry"),
    ("OBDCR_JWKS_ALLOWED_HOSTS", [None], "hosts-none-entry"),
    ("OBDCR_JWKS_ALLOWED_HOSTS", ["https://keystore.example/"], "hosts-url"),
    ("OBDCR_JWKS_ALLOWED_HOSTS", ["keystore.example/jwks"], "hosts-path"),
    ("OBDCR_JWKS_ALLOWED_HOSTS", ["user@keystore.example"], "hosts-userinfo"),
    ("OBDCR_JWKS_ALLOWED_HOSTS", [" keystore.example"], "hosts-whitespace"),
    ("OBDCR_HTTP_VERIFY", False, "verify-false"),
    ("OBDCR_HTTP_VERIFY", None, "verify-none"),
    ("OBDCR_HTTP_VERIFY", 0, "verify-zero"),
    ("OBDCR_HTTP_VERIFY", 1, "verify-one"),
    ("OBDCR_HTTP_VERIFY", "/no/such/ca-bundle.pem", "verify-missing-bundle"),
    ("OBDCR_TRANSPORT_CA_FILE", "/no/such/ob-issuing-ca.pem", "ca-file-missing"),
    ("OBDCR_TRANSPORT_CA_FILE", None, "ca-file-none"),
    ("OBDCR_TRANSPORT_CA_FILE", 42, "ca-file-int"),
    ("OBDCR_CLIENT_CERT_HEADER", "", "cert-header-empty"),
    ("OBDCR_CLIENT_CERT_HEADER", "  ", "cert-header-blank"),
    ("OBDCR_CLIENT_CERT_HEADER", 1, "cert-header-int"),
    ("OBDCR_TRUSTED_PROXIES", ["garbage"], "proxies-garbage"),
    ("OBDCR_TRUSTED_PROXIES", ["10.0.0.1/33"], "proxies-bad-prefix"),
    ("OBDCR_TRUSTED_PROXIES", ["10.0.0.256"], "proxies-bad-octet"),
    ("OBDCR_TRUSTED_PROXIES", "10.0.0.1", "proxies-bare-string"),
    ("OBDCR_TRUSTED_PROXIES", [""], "proxies-empty-entry"),
    ("OBDCR_CLOCK_SKEW", -1, "skew-negative"),
    ("OBDCR_CLOCK_SKEW", True, "skew-bool"),
    ("OBDCR_CLOCK_SKEW", 601, "skew-too-large"),
    ("OBDCR_CLOCK_SKEW", "30", "skew-string"),
    ("OBDCR_CLOCK_SKEW", 1.5, "skew-float"),
    ("OBDCR_CLOCK_SKEW", None, "skew-none"),
    ("OBDCR_SSA_MAX_AGE", 0, "max-age-zero"),
    ("OBDCR_SSA_MAX_AGE", -60, "max-age-negative"),
    ("OBDCR_SSA_MAX_AGE", True, "max-age-bool"),
    ("OBDCR_SSA_MAX_AGE", "3600", "max-age-string"),
    ("OBDCR_MAX_REQUEST_BYTES", 10, "max-bytes-tiny"),
    ("OBDCR_MAX_REQUEST_BYTES", 1023, "max-bytes-just-below"),
    ("OBDCR_MAX_REQUEST_BYTES", 0, "max-bytes-zero"),
    ("OBDCR_MAX_REQUEST_BYTES", 10 * 1024 * 1024 + 1, "max-bytes-huge"),
    ("OBDCR_MAX_REQUEST_BYTES", False, "max-bytes-bool"),
    ("OBDCR_TOKEN_ENDPOINT_AUTH_METHODS", ["client_secret_jwt"], "methods-unknown"),
    ("OBDCR_TOKEN_ENDPOINT_AUTH_METHODS", ["tls_client_auth", "none"], "methods-none"),
    ("OBDCR_TOKEN_ENDPOINT_AUTH_METHODS", [], "methods-empty"),
    ("OBDCR_TOKEN_ENDPOINT_AUTH_METHODS", "tls_client_auth", "methods-bare-string"),
    ("OBDCR_TOKEN_ENDPOINT", "http://as.example/token", "token-endpoint-http"),
    ("OBDCR_TOKEN_ENDPOINT", "/token", "token-endpoint-relative"),
    ("OBDCR_MTLS_BASE_URL", "http://mtls.example", "mtls-base-http"),
    ("OBDCR_MTLS_BASE_URL", "https://u:p@mtls.example", "mtls-base-credentials"),
    ("OBDCR_CERTIFICATE_BOUND_TOKENS", "yes", "bound-tokens-string"),
    ("OBDCR_CERTIFICATE_BOUND_TOKENS", 1, "bound-tokens-int"),
    ("OBDCR_ACCESS_TOKEN_LIFETIME", 0, "token-lifetime-zero"),
    ("OBDCR_ACCESS_TOKEN_LIFETIME", 864000, "token-lifetime-ten-days"),
    ("OBDCR_ACCESS_TOKEN_LIFETIME", True, "token-lifetime-bool"),
    ("OBDCR_MAX_ASSERTION_LIFETIME", 10, "assertion-lifetime-tiny"),
    ("OBDCR_MAX_ASSERTION_LIFETIME", "3600", "assertion-lifetime-string"),
    ("OBDCR_HTTP_TIMEOUT", 0, "http-timeout-zero"),
    ("OBDCR_HTTP_TIMEOUT", -1, "http-timeout-negative"),
    ("OBDCR_HTTP_TIMEOUT", 1000, "http-timeout-huge"),
    ("OBDCR_HTTP_TIMEOUT", None, "http-timeout-none"),
    ("OBDCR_REVOCATION", "maybe", "revocation-unknown-mode"),
    ("OBDCR_REVOCATION", None, "revocation-none"),
    ("OBDCR_REVOCATION_CACHE_SECONDS", 0, "revocation-cache-zero"),
    ("OBDCR_REVOCATION_CACHE_SECONDS", "300", "revocation-cache-string"),
    ("OBDCR_REPLAY_QUOTA_PER_SOFTWARE", 0, "replay-quota-zero"),
    ("OBDCR_REPLAY_QUOTA_PER_SOFTWARE", None, "replay-quota-none"),
    ("OBDCR_EXPLAIN_ENDPOINT", "yes", "explain-endpoint-string"),
    ("OBDCR_EXPLAIN_ENDPOINT", 1, "explain-endpoint-int"),
    ("OBDCR_EXPLAIN_ENDPOINT", None, "explain-endpoint-none"),
    ("OBDCR_LOOPBACK_REDIRECT_URIS", "yes", "loopback-redirect-uris-string"),
    ("OBDCR_LOOPBACK_REDIRECT_URIS", 1, "loopback-redirect-uris-int"),
]


@pytest.mark.parametrize(("key", "value"), [pytest.param(k, v, id=i) for k, v, i in WRONG])
def test_wrong_value_is_refused_naming_the_key(config, key, value):
    config[key] = value
    assert_names(config_error(config), key)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://keystore.openbankingtest.org.uk/openbanking.jwks", id="http"),
        pytest.param("keystore.openbankingtest.org.uk/openbanking.jwks", id="no-scheme"),
        pytest.param("https:///openbanking.jwks", id="no-host"),
        pytest.param(None, id="none"),
    ],
)
def test_trusted_directory_url_must_be_https(config, url):
    config["OBDCR_TRUSTED_DIRECTORIES"] = {"OpenBanking Ltd": url}
    assert config_error(config) == (
        f"OBDCR_TRUSTED_DIRECTORIES['OpenBanking Ltd'] must be an https URL; got {url!r}."
    )


def test_transport_ca_file_that_is_a_directory_is_refused(config, tmp_path):
    config["OBDCR_TRANSPORT_CA_FILE"] = str(tmp_path)
    assert config_error(config) == (
        f"OBDCR_TRANSPORT_CA_FILE must be the path of a PEM file; got {str(tmp_path)!r}."
    )


def test_http_verify_false_says_it_cannot_be_switched_off(config):
    config["OBDCR_HTTP_VERIFY"] = False
    assert config_error(config) == (
        "OBDCR_HTTP_VERIFY must be True or the path of an existing CA bundle; TLS verification"
        " of JWKS fetches cannot be switched off."
    )


# -- defaults and accepted values ------------------------------------------------------------


def test_defaults_are_the_documented_values():
    assert DEFAULTS == {
        "OBDCR_ISSUER": REQUIRED,
        "OBDCR_AUDIENCES": [],
        "OBDCR_TRUSTED_DIRECTORIES": REQUIRED,
        "OBDCR_JWKS_ALLOWED_HOSTS": [],
        "OBDCR_HTTP_VERIFY": True,
        "OBDCR_TRANSPORT_CA_FILE": REQUIRED,
        "OBDCR_CLIENT_CERT_HEADER": None,
        "OBDCR_TRUSTED_PROXIES": [],
        "OBDCR_SIGNING_ALGS": ["PS256", "ES256"],
        "OBDCR_TOKEN_ENDPOINT_AUTH_METHODS": [
            "tls_client_auth",
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post",
        ],
        "OBDCR_CLOCK_SKEW": 30,
        "OBDCR_SSA_MAX_AGE": None,
        "OBDCR_MAX_REQUEST_BYTES": 65536,
        # docs/architecture.md, "Tokens, published URLs and keys"
        "OBDCR_TOKEN_ENDPOINT": None,
        "OBDCR_MTLS_BASE_URL": None,
        "OBDCR_CERTIFICATE_BOUND_TOKENS": True,
        "OBDCR_ACCESS_TOKEN_LIFETIME": 3600,
        "OBDCR_MAX_ASSERTION_LIFETIME": 3600,
        "OBDCR_HTTP_TIMEOUT": 10,
        # docs/architecture.md, "Contract: revocation"
        "OBDCR_REVOCATION": "require",
        "OBDCR_REVOCATION_CACHE_SECONDS": 300,
        "OBDCR_REPLAY_QUOTA_PER_SOFTWARE": 10000,
        # ours, beyond the contract: shared state for several processes
        "OBDCR_REDIS_URL": None,
        "OBDCR_REDIS_PREFIX": "obdcr:",
        "OBDCR_DATABASE_URL": None,
        # ours, beyond the contract: sandboxes only (docs/architecture.md, "Contract: explain")
        "OBDCR_EXPLAIN_ENDPOINT": False,
        # ours, beyond the contract: sandboxes only (the TPP's own page on loopback)
        "OBDCR_LOOPBACK_REDIRECT_URIS": False,
    }


@pytest.mark.parametrize(
    "key,value",
    [
        ("OBDCR_REDIS_URL", "http://127.0.0.1:6379"),
        ("OBDCR_REDIS_URL", 6379),
        ("OBDCR_REDIS_PREFIX", ""),
        ("OBDCR_REDIS_PREFIX", "x" * 101),
        ("OBDCR_DATABASE_URL", "not a url"),
    ],
)
def test_shared_state_keys_are_validated(config, key, value):
    config[key] = value
    assert config_error(config).startswith(f"{key} must be")


@pytest.mark.parametrize("value", [True, False])
def test_explain_endpoint_is_a_bool_off_by_default(config, value):
    assert Settings.from_config(config).explain_endpoint is False
    config["OBDCR_EXPLAIN_ENDPOINT"] = value
    assert Settings.from_config(config).explain_endpoint is value


def test_explain_endpoint_not_a_bool_is_refused(config):
    config["OBDCR_EXPLAIN_ENDPOINT"] = "true"
    assert config_error(config) == (
        "OBDCR_EXPLAIN_ENDPOINT must be True or False (True only in a sandbox); got 'true'."
    )


def test_trusted_directory_url_with_credentials_is_refused(config):
    config["OBDCR_TRUSTED_DIRECTORIES"] = {"OpenBanking Ltd": "https://u:p@keys.example/x.jwks"}
    assert config_error(config) == (
        "OBDCR_TRUSTED_DIRECTORIES['OpenBanking Ltd'] must not carry credentials;"
        " got 'https://u:p@keys.example/x.jwks'."
    )


def test_settings_from_only_the_required_keys_take_the_defaults(config, ca_file):
    settings = Settings.from_config(config)
    assert settings == Settings(
        issuer=ISSUER,
        trusted_directories={"OpenBanking Ltd": DIRECTORY_JWKS},
        transport_ca_file=ca_file,
        audiences=(),
        jwks_allowed_hosts=frozenset(),
        http_verify=True,
        client_cert_header=None,
        trusted_proxies=(),
        signing_algs=("PS256", "ES256"),
        token_endpoint_auth_methods=(
            "tls_client_auth",
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post",
        ),
        clock_skew=30,
        ssa_max_age=None,
        max_request_bytes=65536,
        max_request_lifetime=86400,
        fetch_allowed_hosts=frozenset({"keystore.openbankingtest.org.uk"}),
    )
    assert settings.accepted_audiences == frozenset({ISSUER})


def test_every_key_set_to_a_good_value(config, ca_file, tmp_path):
    config.update(
        OBDCR_AUDIENCES=("0015800001041REAAY", "https://as2.anybank.example"),
        OBDCR_JWKS_ALLOWED_HOSTS=["keystore.openbankingtest.org.uk"],
        OBDCR_HTTP_VERIFY=ca_file,
        OBDCR_CLIENT_CERT_HEADER="X-SSL-Client-Cert",
        OBDCR_TRUSTED_PROXIES=["10.0.0.1", "192.168.0.0/16", "::1", "fd00::/8"],
        OBDCR_SIGNING_ALGS=["PS256", "RS256"],
        OBDCR_TOKEN_ENDPOINT_AUTH_METHODS=["tls_client_auth", "private_key_jwt"],
        OBDCR_CLOCK_SKEW=0,
        OBDCR_SSA_MAX_AGE=3600,
        OBDCR_MAX_REQUEST_BYTES=1024,
        # a PathLike CA file is accepted and kept as a str
        OBDCR_TRANSPORT_CA_FILE=tmp_path / "ca.pem",
    )
    (tmp_path / "ca.pem").write_bytes(Path(ca_file).read_bytes())
    settings = Settings.from_config(config)
    assert settings.audiences == ("0015800001041REAAY", "https://as2.anybank.example")
    assert settings.accepted_audiences == frozenset(
        {ISSUER, "0015800001041REAAY", "https://as2.anybank.example"}
    )
    assert settings.http_verify == ca_file
    assert settings.client_cert_header == "X-SSL-Client-Cert"
    assert settings.trusted_proxies == ("10.0.0.1", "192.168.0.0/16", "::1", "fd00::/8")
    assert settings.signing_algs == ("PS256", "RS256")
    assert settings.token_endpoint_auth_methods == ("tls_client_auth", "private_key_jwt")
    assert settings.clock_skew == 0
    assert settings.ssa_max_age == 3600
    assert settings.max_request_bytes == 1024
    assert settings.transport_ca_file == str(tmp_path / "ca.pem")
    assert type(settings.transport_ca_file) is str


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("OBDCR_CLOCK_SKEW", 600),
        ("OBDCR_MAX_REQUEST_BYTES", 10 * 1024 * 1024),
        ("OBDCR_SSA_MAX_AGE", 1),
    ],
)
def test_bounds_are_inclusive(config, key, value):
    config[key] = value
    settings = Settings.from_config(config)
    field = {
        "OBDCR_CLOCK_SKEW": "clock_skew",
        "OBDCR_MAX_REQUEST_BYTES": "max_request_bytes",
        "OBDCR_SSA_MAX_AGE": "ssa_max_age",
    }[key]
    assert getattr(settings, field) == value


def test_fetch_allowed_hosts_are_configured_hosts_plus_directory_hosts(config):
    config["OBDCR_JWKS_ALLOWED_HOSTS"] = ["Keystore.Example.COM", "other.example", "[::1]"]
    config["OBDCR_TRUSTED_DIRECTORIES"] = {
        "OpenBanking Ltd": "https://Dir-A.example/openbanking.jwks",
        "Another Directory": "https://dir-b.example:8443/keys.jwks",
    }
    settings = Settings.from_config(config)
    assert settings.jwks_allowed_hosts == frozenset(
        {"keystore.example.com", "other.example", "::1"}
    )
    assert settings.fetch_allowed_hosts == frozenset(
        {"keystore.example.com", "other.example", "::1", "dir-a.example", "dir-b.example"}
    )
    assert settings.trusted_directories == {
        "OpenBanking Ltd": "https://Dir-A.example/openbanking.jwks",
        "Another Directory": "https://dir-b.example:8443/keys.jwks",
    }


def test_reads_a_flask_config(config):
    flask_config = Config(".")
    flask_config.from_mapping(config, OBDCR_CLOCK_SKEW=5, UNRELATED="ignored")
    settings = Settings.from_config(flask_config)
    assert settings.issuer == ISSUER
    assert settings.clock_skew == 5


def test_settings_are_frozen_and_independent_of_the_config(config):
    settings = Settings.from_config(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.issuer = "https://evil.example"  # type: ignore[misc]
    config["OBDCR_TRUSTED_DIRECTORIES"]["Evil Directory"] = "https://evil.example/jwks"
    assert settings.trusted_directories == {"OpenBanking Ltd": DIRECTORY_JWKS}
