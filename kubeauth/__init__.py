"""Who is calling: Kubernetes ServiceAccount tokens verified in-process, and allow-lists of callers.

A caller presents `Authorization: Bearer <token>`, a ServiceAccount token bound to the service's
audience (`kubectl create token SA --audience AUDIENCE`, or a projected token volume). Its signature
is checked with PyJWT against the cluster's token-signing keys, read from the API server's own
/openid/v1/jwks (every ServiceAccount may, through the default system:service-account-issuer-discovery
binding) and refreshed every `refresh_seconds`: no call to the API server per request, so a forged
token costs a signature check and nothing else. A token signed by a key not known yet (a rotation)
makes it refresh early, at most once a minute. Verified tokens are remembered until they expire, so a
client reusing its token pays for the signature once.

A fetch has FETCH_SECONDS in all and reads at most MAX_DOCUMENT_BYTES of each answer: an API server
that stalls or answers without end costs a failed fetch, and the keys loaded before stay.

Issuer, audience, expiry and not-before are checked, the algorithm against ALGORITHMS (asymmetric
only: no `none`, no HMAC keyed with a public key). The identity is `namespace/name`, from the subject
`system:serviceaccount:NAMESPACE:NAME`; an allow-list names identities or whole namespaces.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
from loguru import logger

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
# Allowed clock difference between the API server and this pod.
LEEWAY_SECONDS = 10
EARLY_REFRESH_SECONDS = 60
MAX_TOKEN_CHARACTERS = 8192
MAX_REMEMBERED_TOKENS = 1024
FETCH_SECONDS = 10  # for the discovery document and the keys together
MAX_DOCUMENT_BYTES = 1024 * 1024
_SUBJECT = re.compile(
    r"system:serviceaccount:([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?):([a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?)"
)


@dataclass(frozen=True)
class Identity:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Denied(Exception):
    """A request refused: status 401, 403 or 503, a reason from a fixed set (a metric label), a message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class _Keys:
    issuer: str
    by_id: dict[str, jwt.PyJWK]
    published: str  # the key set as published, to tell a new key under a known kid


def allows(allowed: frozenset[str], identity: Identity) -> bool:
    return str(identity) in allowed or f"{identity.namespace}/*" in allowed


@dataclass(frozen=True)
class Source:
    """Where the keys come from and what a token must say."""

    audience: str
    issuer: str  # empty: the discovery document's
    discovery_url: str
    jwks_url: str
    credentials_file: Path  # a bearer token for the fetches, re-read each time, if the file exists
    ca_file: Path  # the CA bundle for the fetches, if the file exists; else the system store
    refresh_seconds: float


class Authenticator:
    def __init__(self, source: Source) -> None:
        self.source = source
        self._keys: _Keys | None = None
        self._remembered: dict[str, tuple[Identity, float]] = {}
        self._refresh = asyncio.Lock()
        self._attempted_at = -EARLY_REFRESH_SECONDS

    @property
    def ready(self) -> bool:
        return self._keys is not None

    async def keep_keys_fresh(self) -> None:
        """After the first `refresh`: fetch the keys every `refresh_seconds` (every few seconds while none
        are loaded)."""
        while True:
            await asyncio.sleep(self.source.refresh_seconds if self.ready else 2)
            await self.refresh()

    async def refresh(self, early: bool = False) -> None:
        """Fetch the keys; `early` (a token with an unknown key) only if no fetch started in the last minute."""
        async with self._refresh:
            if early and time.monotonic() - self._attempted_at < EARLY_REFRESH_SECONDS:
                return
            self._attempted_at = time.monotonic()
            try:
                async with asyncio.timeout(FETCH_SECONDS):
                    keys = await _fetch_keys(self.source)
            except Exception as error:  # noqa: BLE001 (unreachable, stalled, malformed: keep the old keys)
                logger.bind(jwks_url=self.source.jwks_url).warning(
                    "cannot load the token-signing keys ({}: {}); {}",
                    type(error).__name__,
                    str(error)[:300],
                    "keeping the ones loaded before" if self.ready else "protected paths answer 503",
                )
                return
            if self._keys is None or keys.published != self._keys.published:
                logger.bind(issuer=keys.issuer, key_ids=sorted(keys.by_id)).info("token-signing keys loaded")
                self._remembered.clear()  # a key withdrawn or replaced must not keep its tokens valid
            self._keys = keys

    async def identify(self, authorization: list[bytes]) -> Identity:
        """The caller named by the request's Authorization headers, or Denied."""
        if self._keys is None:
            raise Denied(503, "unavailable", "the token-signing keys are not loaded yet")
        if not authorization:
            raise Denied(401, "missing", "no bearer token")
        scheme, _, token = authorization[0].decode("latin-1").partition(" ")
        token = token.strip()
        if (
            len(authorization) > 1
            or scheme.lower() != "bearer"
            or not token
            or len(token) > MAX_TOKEN_CHARACTERS
        ):
            raise Denied(401, "malformed", "expected one header `Authorization: Bearer <token>`")
        if (known := self._remembered.get(token)) is not None and known[1] > time.time():
            return known[0]
        key = await self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.source.audience,
                issuer=self._keys.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Denied(401, "expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Denied(401, "not_yet_valid", "the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Denied(
                401, "audience", f"the token is not for the audience {self.source.audience}"
            ) from None
        except jwt.InvalidIssuerError:
            raise Denied(401, "issuer", "the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise Denied(401, "signature", "the token's signature does not verify") from None
        except jwt.InvalidTokenError as error:
            raise Denied(401, "malformed", f"invalid token: {str(error)[:200]}") from None
        subject = _SUBJECT.fullmatch(str(claims["sub"]))
        if subject is None:
            raise Denied(403, "forbidden", "the token is not a Kubernetes ServiceAccount's")
        identity = Identity(subject.group(1), subject.group(3))
        if len(self._remembered) >= MAX_REMEMBERED_TOKENS:
            del self._remembered[next(iter(self._remembered))]
        self._remembered[token] = (identity, float(claims["exp"]))
        return identity

    async def _key_for(self, token: str) -> jwt.PyJWK:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:  # not a JWT, or a header PyJWT refuses (a kid not a string)
            raise Denied(401, "malformed", f"the bearer token is not a JWT: {str(error)[:200]}") from None
        if header.get("alg") not in ALGORITHMS:
            raise Denied(401, "algorithm", f"algorithm not accepted; accepted: {', '.join(ALGORITHMS)}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Denied(401, "unknown_key", "the token names no signing key (kid)")
        key = self._keys.by_id.get(kid)
        if key is None:
            await self.refresh(early=True)  # a rotated key, perhaps
            key = self._keys.by_id.get(kid)
        if key is None:
            raise Denied(401, "unknown_key", "the token is signed by a key this cluster does not publish")
        if key.algorithm_name != header["alg"]:
            raise Denied(401, "algorithm", "the token's algorithm does not match its key")
        return key


async def _fetch_keys(source: Source) -> _Keys:
    """The issuer and its signing keys, from the API server."""
    # Uncompressed: a small compressed answer must not inflate past MAX_DOCUMENT_BYTES in one read.
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    if source.credentials_file.is_file():
        headers["Authorization"] = f"Bearer {source.credentials_file.read_text().strip()}"
    verify: ssl.SSLContext | bool = True
    if source.ca_file.is_file():
        verify = ssl.create_default_context(cafile=str(source.ca_file))
    async with httpx.AsyncClient(headers=headers, verify=verify, timeout=5, follow_redirects=False) as client:
        issuer = source.issuer or (await _get(client, source.discovery_url)).get("issuer")
        document = await _get(client, source.jwks_url)
    keys = await asyncio.to_thread(jwt.PyJWKSet.from_dict, document)  # a few ms a key
    by_id = {key.key_id: key for key in keys if key.key_id and key.algorithm_name in ALGORITHMS}
    if not by_id:
        raise ValueError(f"no usable key: each needs a kid and one of {', '.join(ALGORITHMS)}")
    if not isinstance(issuer, str) or not issuer:
        raise ValueError("the discovery document names no issuer")
    return _Keys(issuer, by_id, json.dumps(document.get("keys"), sort_keys=True))


async def _get(client: httpx.AsyncClient, url: str) -> dict:
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        content = bytearray()
        async for chunk in response.aiter_raw():
            content += chunk
            if len(content) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(content)
    if not isinstance(document, dict):
        raise TypeError(f"{url} did not answer a JSON object")
    return document
