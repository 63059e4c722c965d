"""Envoy authentication (specs/envoy.md §3): JWT tokens, Enlighten/Entrez, Digest.

Firmware >= 7 wants a JWT: a static one from the config, or one fetched from
the Enphase cloud with the owner's Enlighten credentials (login → Entrez
token), checked locally with ``/auth/check_jwt``, cached in the store and
renewed ahead of expiry. Firmware < 7 uses HTTP Digest (RFC 2617, MD5,
``qop=auth``) with the ``installer`` password derived from the serial, or the
``envoy`` user's last-six-digits default.

The pure parts (JWT claims, refresh rule, password derivation, Digest
response) need no reactor. :class:`EnlightenCloud` and :class:`TokenManager`
do their I/O through an injected ``http`` object and ``check`` callable, so
tests drive them against a fake cloud on 127.0.0.1.

Secrets (tokens, passwords, session ids) never go into exception messages;
every message built here is safe for logs, ``/healthz`` and ``/metrics``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

from meteremu.clocks import wall
from meteremu.failures import describe
from meteremu.httpclient import HttpResult
from meteremu.interfaces import IReactorTime, Values
from meteremu.logs import logger

log = logger("meteremu.sources.envoy.auth")

DAY = 86400.0
OWNER_REFRESH_MARGIN = 30 * DAY  # Home Assistant's rule (spec §3.1)
SHORT_TOKEN_LIFETIME = 7 * DAY  # at most this long: an installer-style short token
SHORT_REFRESH_MARGIN = 3600.0  # renew an installer token (12 h) one hour ahead
DIGEST_REALM = "enphaseenergy.com"


class AuthError(Exception):
    """Authentication failed. The message is safe to show (no secrets)."""

    permanent = False  # True: retrying soon cannot help (bad password, MFA, expired static token)


class PermanentAuthError(AuthError):
    permanent = True


class MfaRequired(PermanentAuthError):
    pass


class CloudError(AuthError):
    """The Enphase cloud could not be reached or answered nonsense."""


# -- secrets -------------------------------------------------------------------------


class Redactor:
    """Replaces known secrets in any text: the last line of defence for messages."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "***")
        return text


# -- JWT ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenClaims:
    exp: float | None
    iat: float | None
    user_type: str | None  # enphaseUser: "owner" or "installer"
    aud: str | None  # the Envoy serial the token is for
    iss: str | None
    username: str | None

    @property
    def lifetime(self) -> float | None:
        if self.exp is None or self.iat is None:
            return None
        return self.exp - self.iat

    @property
    def refresh_margin(self) -> float:
        """Renew this long before ``exp``: 30 days for owner tokens, 1 h for short ones."""
        lifetime = self.lifetime
        if self.user_type == "installer" or (lifetime is not None and lifetime <= SHORT_TOKEN_LIFETIME):
            return min(SHORT_REFRESH_MARGIN, (lifetime or SHORT_REFRESH_MARGIN * 4) / 4)
        return OWNER_REFRESH_MARGIN

    def remaining(self, now: float) -> float | None:
        return None if self.exp is None else self.exp - now

    def expired(self, now: float) -> bool:
        return self.exp is not None and now >= self.exp

    def refresh_due(self, now: float) -> bool:
        remaining = self.remaining(now)
        return remaining is not None and remaining < self.refresh_margin


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decode_jwt(token: str) -> TokenClaims:
    """Read a JWT's claims without verifying the signature (the Envoy does that).

    Raises :class:`AuthError` (without the token in the message) if it is not a JWT.
    """
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise PermanentAuthError("the token is not a JWT (expected three dot-separated parts)")
    try:
        payload = json.loads(_b64url(parts[1]))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise PermanentAuthError("the token is not a JWT (unreadable payload)") from None
    if not isinstance(payload, dict):
        raise PermanentAuthError("the token is not a JWT (payload is not an object)")

    def num(key: str) -> float | None:
        value = payload.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def text(key: str) -> str | None:
        value = payload.get(key)
        return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None

    return TokenClaims(exp=num("exp"), iat=num("iat"), user_type=text("enphaseUser"),
                       aud=text("aud"), iss=text("iss"), username=text("username"))


def describe_expiry(claims: TokenClaims) -> str:
    if claims.exp is None:
        return "no expiry"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(claims.exp))


# -- legacy passwords (firmware < 7) --------------------------------------------------------


def envoy_password(serial: str) -> str:
    """The ``envoy`` user's default password: the last six digits of the serial."""
    return serial[-6:]


def installer_password(serial: str, user: str = "installer", realm: str = DIGEST_REALM) -> str:
    """The ``installer`` password derived from the serial (spec §3.2, after sarnau's passwordCalc).

    The steps follow the paraphrase in the spec: count ``0`` and ``1`` in an MD5
    digest, walk its last 8 characters backwards, and map ``0``/``1`` to letters
    from those counts.
    """
    digest = hashlib.md5(f"[e]{user}@{realm}#{serial} EnPhAsE eNeRgY ".encode()).hexdigest()  # noqa: S324
    zeros = digest.count("0")
    ones = digest.count("1")
    out = []
    for char in reversed(digest[-8:]):
        if zeros in (3, 6, 9):
            zeros -= 1
        zeros = min(max(zeros, 0), 20)
        if ones in (9, 15):
            ones -= 1
        ones = min(max(ones, 0), 26)
        if char == "0":
            out.append(chr(ord("f") + zeros))
            zeros -= 1
        elif char == "1":
            out.append(chr(ord("@") + ones))
            ones -= 1
        else:
            out.append(char)
    return "".join(out)


# -- HTTP Digest (RFC 2617, MD5, qop=auth; RFC 2069 without qop) ------------------------------


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - the protocol's own hash


def digest_response(method: str, uri: str, params: dict[str, str], username: str, password: str,
                    nc: int, cnonce: str) -> str:
    """The ``Authorization: Digest ...`` header value for one request."""
    realm = params.get("realm", "")
    nonce = params.get("nonce", "")
    algorithm = params.get("algorithm")
    ha1 = _md5(f"{username}:{realm}:{password}")
    if algorithm and algorithm.upper() == "MD5-SESS":
        ha1 = _md5(f"{ha1}:{nonce}:{cnonce}")
    ha2 = _md5(f"{method}:{uri}")
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    fields = [f'username="{username}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if "auth" in qops:
        ncv = f"{nc:08x}"
        response = _md5(f"{ha1}:{nonce}:{ncv}:{cnonce}:auth:{ha2}")
        fields += [f'response="{response}"', "qop=auth", f"nc={ncv}", f'cnonce="{cnonce}"']
    else:
        fields.append(f'response="{_md5(f"{ha1}:{nonce}:{ha2}")}"')
    if algorithm:
        fields.append(f"algorithm={algorithm}")
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(fields)


class DigestAuth:
    """Digest credentials plus the last challenge, reused with a growing ``nc``."""

    def __init__(self, username: str, password: str, cnonce: Callable[[], str] | None = None) -> None:
        self.username = username
        self.password = password
        self._params: dict[str, str] | None = None
        self._nc = 0
        self._cnonce = cnonce or (lambda: os.urandom(8).hex())

    def challenge(self, params: dict[str, str]) -> None:
        self._params = dict(params)
        self._nc = 0

    def forget(self) -> None:
        self._params = None

    def header(self, method: str, url: str) -> str | None:
        if self._params is None:
            return None
        self._nc += 1
        parts = urlsplit(url)
        uri = parts.path or "/"
        if parts.query:
            uri += "?" + parts.query
        return digest_response(method, uri, self._params, self.username, self.password,
                               self._nc, self._cnonce())


# -- the Enphase cloud ---------------------------------------------------------------------------


class HttpLike(Protocol):
    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                data: Any = None, json_body: Any = None, limit: int = ...) -> Deferred[HttpResult]: ...


LOGIN_PATH = "/login/login.json"
TOKENS_PATH = "/tokens"


def service_base(url: str, endpoint: str) -> str:
    """The service's base URL, whether the endpoint's path was written or not.

    ``https://enlighten.enphaseenergy.com`` and
    ``https://enlighten.enphaseenergy.com/login/login.json`` both mean the same
    service (earlier example files wrote the latter): the path is never added twice.
    """
    base = url.rstrip("/")
    return base[: -len(endpoint)] if base.endswith(endpoint) else base


class EnlightenCloud:
    """Login at Enlighten, then ask Entrez for a token (spec §3.1 steps 1-2).

    ``http`` verifies TLS normally (system trust, or the configured CA file):
    the credentials go to the cloud, never to an unverified peer.
    """

    def __init__(self, http: HttpLike, enlighten_url: str, entrez_url: str,
                 redact: Redactor) -> None:
        self.http = http
        self.enlighten_url = service_base(enlighten_url, LOGIN_PATH)
        self.entrez_url = service_base(entrez_url, TOKENS_PATH)
        self.redact = redact

    async def fetch_token(self, username: str, password: str, serial: str) -> str:
        try:
            login = await self.http.request(
                "POST", f"{self.enlighten_url}{LOGIN_PATH}?",
                data={"user[email]": username, "user[password]": password},
                headers={"Accept": "application/json"})
        except AuthError:
            raise
        except Exception as exc:
            raise CloudError(f"Enlighten login failed: {describe(exc)}") from None
        if login.status in (401, 403):
            raise PermanentAuthError(
                f"Enlighten login refused (HTTP {login.status}): check username and password")
        if login.status != 200:
            raise CloudError(f"Enlighten login failed (HTTP {login.status})")
        try:
            answer = json.loads(login.body)
        except ValueError:
            raise CloudError("Enlighten login answered something that is not JSON") from None
        session = answer.get("session_id") if isinstance(answer, dict) else None
        if not isinstance(session, str) or not session:
            raise MfaRequired(
                "Enlighten login returned no session_id: multi-factor authentication is "
                "probably enabled on this account; disable it, or configure a token instead")
        self.redact.add(session)
        try:
            issued = await self.http.request(
                "POST", f"{self.entrez_url}{TOKENS_PATH}",
                json_body={"session_id": session, "serial_num": serial, "username": username},
                headers={"Accept": "text/plain, application/json"})
        except AuthError:
            raise
        except Exception as exc:
            raise CloudError(f"Entrez token request failed: {describe(exc)}") from None
        if issued.status in (401, 403):
            raise PermanentAuthError(
                f"Entrez refused a token for Envoy {serial} (HTTP {issued.status}): "
                "is this Envoy in the account's systems?")
        if issued.status != 200:
            raise CloudError(f"Entrez token request failed (HTTP {issued.status})")
        token = issued.body.decode("utf-8", "replace").strip()
        self.redact.add(token)
        decode_jwt(token)  # raises (safely) if Entrez sent something else
        return token


# -- the token for one Envoy ------------------------------------------------------------------------


Check = Callable[[str], Awaitable[bool]]


class TokenManager:
    """Which JWT to send to the Envoy, and when to get a new one.

    Sources, in order: the token in use (after an outage), the configured
    static ``token``, the store's cached one (``envoy:<serial>:token``), and
    the cloud (with Enlighten credentials). A token is used only after the
    Envoy accepted it at ``/auth/check_jwt``.
    """

    def __init__(self, *, static_token: str | None, username: str | None, password: str | None,
                 cloud: EnlightenCloud | None, store: Values | None, clock: IReactorTime,
                 redact: Redactor) -> None:
        self.static_token = static_token.strip() if static_token else None
        self.username = username
        self.password = password
        self.cloud = cloud
        self.store = store
        self.clock = clock
        self.redact = redact
        redact.add(self.static_token)
        redact.add(password)
        self.serial: str | None = None
        self.token: str | None = None
        self.claims: TokenClaims | None = None
        self.origin: str | None = None  # "config", "store" or "cloud"
        self._suspect = False
        self._fresh: str | None = None
        self._refreshing: Deferred[Any] | None = None
        self._next_refresh_attempt = 0.0
        self._warned_expiry = False
        self._stopped = False
        self.cloud_fetches = 0

    @property
    def has_credentials(self) -> bool:
        return bool(self.username and self.password and self.cloud is not None)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _key(self) -> str:
        return f"envoy:{self.serial}:token"

    def _usable(self, token: str | None) -> TokenClaims | None:
        """Claims of a token worth trying now: decodable, for this Envoy, not expired."""
        if not token:
            return None
        try:
            claims = decode_jwt(token)
        except AuthError:
            return None
        if claims.expired(wall(self.clock)):
            return None
        if claims.aud and self.serial and claims.aud not in (self.serial, "un-commissioned"):
            return None
        return claims

    def _adopt(self, token: str, origin: str) -> None:
        self.redact.add(token)
        self.token = token
        self.claims = self._usable(token) or decode_jwt(token)
        self.origin = origin
        self._suspect = False
        self._warned_expiry = False
        if origin == "cloud" and self.store is not None:
            self.store.put(self._key(), token)

    async def _from_cloud(self) -> str:
        if not self.has_credentials:
            raise PermanentAuthError("no Enlighten credentials to fetch a token")
        assert self.cloud is not None and self.username and self.password and self.serial
        self.cloud_fetches += 1
        token = await self.cloud.fetch_token(self.username, self.password, self.serial)
        return token

    def _cached(self) -> str | None:
        if self.store is None or not self.has_credentials:
            return None
        cached = self.store.get(self._key())
        if not isinstance(cached, str):
            return None
        claims = self._usable(cached)
        if claims is None:
            return None
        if claims.username and self.username and claims.username.lower() != self.username.lower():
            return None  # cached for another account
        return cached

    async def acquire(self, serial: str, check: Check) -> None:
        """At (re)connect: end with a token the Envoy accepted, or raise AuthError."""
        if serial != self.serial:
            self.token = self.claims = None
        self.serial = serial
        now = wall(self.clock)  # tokens expire on the wall clock
        candidates: list[tuple[str, str]] = []

        def add(token: str | None, origin: str | None) -> None:
            if token and origin and token not in (c for c, _ in candidates):
                candidates.append((token, origin))

        if not self._suspect:
            add(self.token, self.origin)
        add(self.static_token, "config")  # always worth a check: it is all there is without credentials
        cached = self._cached()
        if not (self._suspect and cached == self.token):
            add(cached, "store")
        rejected = False
        cloud_failed: AuthError | None = None
        for token, origin in candidates:
            claims = self._usable(token)
            if claims is None:
                continue
            if claims.refresh_due(now) and self.has_credentials and cloud_failed is None:
                try:
                    fresh = await self._from_cloud()
                except AuthError as exc:
                    cloud_failed = exc
                    log.warn("token renewal failed, using the current one until {expiry}: {why}",
                             expiry=describe_expiry(claims), why=self.redact(str(exc)))
                else:
                    if await check(fresh):
                        self._adopt(fresh, "cloud")
                        return
            if await check(token):
                self._adopt(token, origin)
                return
            rejected = True
        if cloud_failed is not None:
            raise cloud_failed  # the cloud just failed: do not ask it twice in one attempt
        if self.has_credentials:
            fresh = await self._from_cloud()
            if await check(fresh):
                self._adopt(fresh, "cloud")
                return
            raise AuthError("the Envoy rejected a token just issued by Entrez (check the serial)")
        if rejected:
            raise PermanentAuthError(
                "the Envoy rejected the configured token (expired, revoked or for another Envoy); "
                "configure a new token or Enlighten credentials")
        if self.static_token:
            claims = decode_jwt(self.static_token)  # raises for a non-JWT
            if claims.expired(now):
                raise PermanentAuthError(
                    f"the configured token expired ({describe_expiry(claims)}); configure a new "
                    "token or Enlighten credentials")
            raise PermanentAuthError("the configured token is for another Envoy (aud does not match)")
        raise PermanentAuthError("firmware >= 7 needs a token or Enlighten username/password")

    async def reauthenticate(self, check: Check) -> None:
        """After a 401/403: re-check the current token once, else fetch a new one."""
        if self.token and await check(self.token):
            return
        self._suspect = True
        if not self.has_credentials:
            raise PermanentAuthError(
                "the Envoy rejected the token (HTTP 401/403); configure a new token or "
                "Enlighten credentials")
        fresh = await self._from_cloud()
        if not await check(fresh):
            raise AuthError("the Envoy rejected a token just issued by Entrez")
        self._adopt(fresh, "cloud")

    def mark_suspect(self) -> None:
        """The Envoy refused the token even after re-authentication: do not trust it again."""
        self._suspect = True

    # -- renewal ahead of expiry, in the background ---------------------------------------

    def maybe_refresh(self) -> None:
        """Start fetching a new token from the cloud when the current one nears expiry."""
        if self.claims is None or self._refreshing is not None or self._fresh is not None:
            return
        now = wall(self.clock)
        if not self.claims.refresh_due(now):
            return
        if not self.has_credentials:
            if not self._warned_expiry:
                self._warned_expiry = True
                log.warn("the Envoy token expires {expiry} and there are no Enlighten credentials "
                         "to renew it", expiry=describe_expiry(self.claims))
            return
        if now < self._next_refresh_attempt:
            return
        retry = min(3600.0, self.claims.refresh_margin / 4)
        self._next_refresh_attempt = now + retry

        def done(token: str) -> None:
            self._fresh = token

        def failed(failure: Any) -> None:
            if failure.check(CancelledError) and self._stopped:
                return None
            why = str(failure.value) if failure.check(AuthError) else describe(failure.value)
            log.warn("token renewal failed (next try in {retry:.0f} s): {why}",
                     retry=retry, why=self.redact(why))
            return None

        def finished(result: Any) -> Any:
            self._refreshing = None
            return result

        d = ensureDeferred(self._from_cloud())
        d.addCallbacks(done, failed)
        d.addBoth(finished)
        if not d.called:
            self._refreshing = d

    async def adopt_fresh(self, check: Check) -> bool:
        """Switch to a renewed token once the Envoy accepted it; True if switched."""
        fresh, self._fresh = self._fresh, None
        if fresh is None:
            return False
        if await check(fresh):
            self._adopt(fresh, "cloud")
            log.info("renewed the Envoy token; it expires {expiry}",
                     expiry=describe_expiry(self.claims) if self.claims else "?")
            return True
        log.warn("the Envoy rejected the renewed token; keeping the current one")
        return False

    def stop(self) -> None:
        self._stopped = True
        if self._refreshing is not None:
            self._refreshing.cancel()
            self._refreshing = None
