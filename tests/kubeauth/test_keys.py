"""The signing keys, fetched over real HTTP from a local issuer (tests/bento/issuer.py) that stalls,
answers without end, or publishes a new key under a known kid: a fetch is bounded in time and bytes,
the keys loaded before stay, and no token outlives the key that signed it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kubeauth import FETCH_SECONDS, MAX_DOCUMENT_BYTES, Authenticator, Denied, Identity, Source
from tests.bento.issuer import AUDIENCE, Issuer, SigningKey, running_issuer


def authenticator(issuer: Issuer) -> Authenticator:
    return Authenticator(
        Source(AUDIENCE, "", issuer.discovery_url, issuer.jwks_url, Path("/absent"), Path("/absent"), 300)
    )


def bearer(token: str) -> list[bytes]:
    return [f"Bearer {token}".encode()]


async def timed_refresh(keys: Authenticator) -> float:
    started = time.monotonic()
    await asyncio.wait_for(keys.refresh(), FETCH_SECONDS + 20)  # fails here, rather than hang, if unbounded
    return time.monotonic() - started


@pytest.mark.slow
def test_a_fetch_that_stalls_gives_up_in_time_and_keeps_the_keys_loaded_before() -> None:
    async def scenario(issuer: Issuer) -> None:
        keys = authenticator(issuer)
        await keys.refresh()
        token = issuer.token()
        issuer.drip = 1.0  # one byte a second: the key set would take half an hour
        issuer.keys.append(SigningKey.ec())
        assert await timed_refresh(keys) < FETCH_SECONDS + 1
        assert await keys.identify(bearer(token)) == Identity("apps", "frontend")
        issuer.drip = 0.0
        await keys.refresh()  # the next fetch is not held up behind the stalled one
        assert await keys.identify(bearer(issuer.token(key=issuer.keys[-1]))) == Identity("apps", "frontend")

    with running_issuer() as issuer:
        asyncio.run(scenario(issuer))


@pytest.mark.slow
def test_a_first_fetch_that_stalls_leaves_the_service_without_keys_in_time() -> None:
    async def scenario(issuer: Issuer) -> None:
        keys = authenticator(issuer)
        issuer.drip = 1.0
        assert await timed_refresh(keys) < FETCH_SECONDS + 1 and not keys.ready
        with pytest.raises(Denied) as denied:
            await keys.identify(bearer(issuer.token()))
        assert denied.value.status == 503

    with running_issuer() as issuer:
        asyncio.run(scenario(issuer))


def test_an_answer_without_end_is_dropped_after_the_limit() -> None:
    async def scenario(issuer: Issuer) -> None:
        keys = authenticator(issuer)
        issuer.padding = 256 * MAX_DOCUMENT_BYTES
        assert await timed_refresh(keys) < FETCH_SECONDS and not keys.ready
        # What the socket buffers take beyond the limit, not the 256 MiB declared.
        assert issuer.sent < 16 * MAX_DOCUMENT_BYTES, issuer.sent
        issuer.padding = 1000  # white space after the document within the limit: still a document
        await keys.refresh()
        assert keys.ready

    with running_issuer() as issuer:
        asyncio.run(scenario(issuer))


def test_a_new_key_under_a_known_kid_ends_the_tokens_of_the_old_one() -> None:
    async def scenario(issuer: Issuer) -> None:
        keys = authenticator(issuer)
        await keys.refresh()
        old = issuer.token()
        assert await keys.identify(bearer(old)) == Identity("apps", "frontend")  # remembered from here on
        replacement = SigningKey.rsa()
        replacement.kid = issuer.keys[0].kid
        issuer.keys[0] = replacement
        await keys.refresh()
        with pytest.raises(Denied) as denied:
            await keys.identify(bearer(old))
        assert (denied.value.status, denied.value.reason) == (401, "signature")
        assert await keys.identify(bearer(issuer.token())) == Identity("apps", "frontend")

    with running_issuer() as issuer:
        asyncio.run(scenario(issuer))
