"""TLS and basic authentication of the metrics endpoint, from a web config file in the
format of Prometheus exporters (prometheus/exporter-toolkit's ``web-config.yml``).

The subset read here: ``tls_server_config`` (``cert_file``, ``key_file``,
``client_auth_type``, ``client_ca_file``, ``min_version``, ``max_version``) and
``basic_auth_users`` (user name -> bcrypt hash).  Keys of the format that aiobpf does not
implement, and keys the format does not have, are refused with an error that names them,
never ignored: a setting that silently does nothing is worse than one that fails.
Relative file names are relative to the web config file's directory, as in the toolkit.
The file and its certificates are read once, when the daemon starts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiobpf.daemon.config import ConfigError

MAX_FILE_BYTES = 1 << 20
# TLS 1.0 and 1.1 are refused: deprecated (RFC 8996), and OpenSSL's defaults disable them.
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version"}
# Keys of the toolkit's format that aiobpf does not implement (refused, with this reason).
UNSUPPORTED = {
    "http_server_config": "HTTP/2 and extra headers are not offered",
    "rate_limit": "the endpoint bounds connections instead (32, at most 8 per address)",
    "tls_server_config.cert": "give the certificate as cert_file",
    "tls_server_config.key": "give the key as key_file",
    "tls_server_config.client_ca": "give the CA as client_ca_file",
    "tls_server_config.cipher_suites": "OpenSSL's defaults for the TLS versions allowed apply",
    "tls_server_config.curve_preferences": "OpenSSL's defaults apply",
    "tls_server_config.prefer_server_cipher_suites": "OpenSSL's defaults apply",
    "tls_server_config.client_allowed_sans": "verify clients by their CA instead",
    "tls_server_config.client_auth_type=RequestClientCert":
        "an unverified client certificate proves nothing: use RequireAndVerifyClientCert",
    "tls_server_config.client_auth_type=RequireAnyClientCert":
        "an unverified client certificate proves nothing: use RequireAndVerifyClientCert",
}
# $2a$, $2b$ or $2y$, a cost of 04-31, 22 characters of salt and 31 of hash.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
MAX_BCRYPT_PASSWORD = 72          # bytes; bcrypt ignores (bcrypt >= 5: refuses) the rest
AUTH_CACHE_SECONDS = 60.0
AUTH_CACHE_ENTRIES = 256


class WebConfigError(ConfigError):
    """The web config cannot be used; the message names the file, the key and why."""


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None = None
    auth: BasicAuth | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


def load_web_config(path: str | Path | None) -> WebConfig:
    """The endpoint's TLS context and users from the web config at ``path`` (none: plain
    HTTP, no authentication)."""
    if not path:
        return WebConfig()
    path = Path(path)
    data = _read_yaml(path)
    if data is None:
        return WebConfig()
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: expected a mapping of tls_server_config and "
                             "basic_auth_users")
    _refuse_unknown(path, "", data, {"tls_server_config", "basic_auth_users"})
    tls = _tls_context(path, data.get("tls_server_config"))
    users = data.get("basic_auth_users")
    return WebConfig(tls, BasicAuth(_users(path, users)) if users else None)


def _read_yaml(path: Path) -> Any:
    import yaml  # only a daemon with a web config needs it

    try:
        with path.open("rb") as file:
            text = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise WebConfigError(f"web config {path}: {exc.strerror}") from None
    if len(text) > MAX_FILE_BYTES:
        raise WebConfigError(f"web config {path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"web config {path}: not valid YAML: {exc}") from None


def _refuse_unknown(path: Path, prefix: str, table: dict, known: set[str]) -> None:
    for key in table:
        name = f"{prefix}{key}"
        if name in UNSUPPORTED:
            raise WebConfigError(f"web config {path}: {name} is not supported by aiobpf "
                                 f"({UNSUPPORTED[name]})")
        if key not in known:
            raise WebConfigError(f"web config {path}: unknown key {name!r} (known: "
                                 f"{', '.join(sorted(known))})")


def _tls_context(path: Path, table: Any) -> ssl.SSLContext | None:
    if not table:
        return None     # as in the toolkit: an empty tls_server_config serves plain HTTP
    if not isinstance(table, dict):
        raise WebConfigError(f"web config {path}: tls_server_config must be a mapping")
    _refuse_unknown(path, "tls_server_config.", table, TLS_KEYS)
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise WebConfigError(f"web config {path}: tls_server_config.{key} must be a "
                                 "non-empty string")

    def file(key: str) -> Path | None:
        name = table.get(key)
        return path.parent / name if name else None

    cert, key = file("cert_file"), file("key_file")
    if cert is None or key is None:
        raise WebConfigError(f"web config {path}: tls_server_config needs both cert_file "
                             "and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for setting, attribute in (("min_version", "minimum_version"),
                               ("max_version", "maximum_version")):
        if setting in table:
            if table[setting] not in TLS_VERSIONS:
                raise WebConfigError(f"web config {path}: tls_server_config.{setting}: one "
                                     f"of {', '.join(TLS_VERSIONS)}")
            setattr(context, attribute, TLS_VERSIONS[table[setting]])
        elif setting == "min_version":
            context.minimum_version = ssl.TLSVersion.TLSv1_2
    if "max_version" in table and context.minimum_version > context.maximum_version:
        raise WebConfigError(f"web config {path}: min_version is above max_version")
    try:
        # A password callback that gives none: an encrypted key fails here instead of
        # OpenSSL prompting on the daemon's terminal.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"web config {path}: cannot load cert_file {cert} with key_file "
                             f"{key} ({_why(exc)}; encrypted keys are not supported)") from None
    auth_type = table.get("client_auth_type", "NoClientCert")
    if f"tls_server_config.client_auth_type={auth_type}" in UNSUPPORTED:
        raise WebConfigError(
            f"web config {path}: client_auth_type {auth_type} is not supported by aiobpf "
            f"({UNSUPPORTED[f'tls_server_config.client_auth_type={auth_type}']})")
    if auth_type not in CLIENT_AUTH:
        raise WebConfigError(f"web config {path}: client_auth_type: one of "
                             f"{', '.join(CLIENT_AUTH)}")
    context.verify_mode = CLIENT_AUTH[auth_type]
    ca = file("client_ca_file")
    if (ca is not None) != (context.verify_mode != ssl.CERT_NONE):
        raise WebConfigError(f"web config {path}: client_ca_file goes with client_auth_type "
                             "VerifyClientCertIfGiven or RequireAndVerifyClientCert, and "
                             "they with it")
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"web config {path}: cannot load client_ca_file {ca} "
                                 f"({_why(exc)})") from None
    return context


def _why(exc: OSError | ssl.SSLError) -> str:
    return getattr(exc, "reason", None) or exc.strerror or str(exc)


def _users(path: Path, table: Any) -> dict[str, bytes]:
    if not isinstance(table, dict):
        raise WebConfigError(f"web config {path}: basic_auth_users must map user names to "
                             "bcrypt hashes")
    users = {}
    for user, hashed in table.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"web config {path}: basic_auth_users: {user!r} is not a "
                                 "user name (a non-empty string without ':')")
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(f"web config {path}: basic_auth_users.{user}: not a bcrypt "
                                 "hash (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')")
        users[user] = hashed.encode()
    return users


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is slow on purpose (~60 ms at cost 10), so verdicts are cached for a minute:
    a scrape storm costs one hash per distinct credential, not one per scrape.  The cache
    is keyed by an HMAC of the presented credentials under a key made at start, so it
    holds no password nor anything a password can be guessed from offline.  An unknown
    user is checked against a dummy hash so that timing does not tell which users exist;
    bcrypt compares in constant time.  One hash at a time: a flood of wrong passwords
    costs at most one core."""

    def __init__(self, users: dict[str, bytes]) -> None:
        import bcrypt

        self._bcrypt = bcrypt
        self._users = users
        self._key = secrets.token_bytes(32)
        cost = int(next(iter(users.values()))[4:6])
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        self._cache: dict[bytes, tuple[bool, float]] = {}
        self._cache_lock = threading.Lock()
        self._hash_lock = threading.Lock()

    def accepts(self, header: str | None, timeout: float = 10.0) -> bool:
        """Whether ``header`` (an Authorization header's value) names a user and their
        password."""
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user.decode("utf-8", "replace"))
        known = hashed is not None
        hashed = hashed if hashed is not None else self._dummy
        key = hmac.new(self._key, b"\0".join((user, hashed, password)), hashlib.sha256).digest()
        now = time.monotonic()
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0] and known
        if not self._hash_lock.acquire(timeout=timeout):
            return False
        try:
            ok = self._check(password, hashed) and known
        finally:
            self._hash_lock.release()
        with self._cache_lock:
            if len(self._cache) >= AUTH_CACHE_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                while len(self._cache) >= AUTH_CACHE_ENTRIES:
                    del self._cache[next(iter(self._cache))]
            self._cache[key] = (ok, now + AUTH_CACHE_SECONDS)
        return ok

    def _check(self, password: bytes, hashed: bytes) -> bool:
        if len(password) > MAX_BCRYPT_PASSWORD:
            # Still spend a hash's time: the length of a wrong password is no oracle.
            self._bcrypt.checkpw(b"", self._dummy)
            return False
        try:
            return bool(self._bcrypt.checkpw(password, hashed))
        except ValueError:
            return False


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from ``Basic base64(user:password)``, or None."""
    if not header or len(header) > 4096:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None
