"""The runs list at speed without changing its answers: text search through the trigram indexes (FTS5 on
SQLite, pg_trgm on PostgreSQL) finds exactly what the plain ILIKE found, cursor pages bounded by the index
neither skip nor repeat runs, and batches verified on the verification threads keep their good bundles."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from postgres import create_database, drop_database
from server_process import wait_until

from fluxrun.bundle import load_capture_key, read_bundle, signing_public_key
from fluxrun_server.ingest.batch import encode_batch
from fluxrun_server.ingest.verify import Verifier, check_bundles, raw_signers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres_url():
    """A database of this module's own: the shared session one already has test_api's `acme` workspace."""
    url = create_database()
    yield url
    drop_database(url)


def post(server, bundles):
    response = httpx.post(
        f"{server.url}/v1/executions",
        content=encode_batch(bundles),
        headers={"authorization": f"Bearer {server.tokens['ingest']}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()


def runs(server, **params):
    project = httpx.get(
        f"{server.url}/v1/projects", headers={"authorization": f"Bearer {server.tokens['api']}"}, timeout=30
    ).json()["projects"][0]["id"]
    response = httpx.get(
        f"{server.url}/v1/projects/{project}/runs",
        params=params,
        headers={"authorization": f"Bearer {server.tokens['api']}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def all_pages(server, **params):
    ids, cursor = [], None
    while True:
        page = runs(server, **params, **({"cursor": cursor} if cursor else {}))
        ids += [r["bundle_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


def visible(server, ids):
    return wait_until(
        lambda: all(
            httpx.get(
                f"{server.url}/v1/runs/{i}", headers={"authorization": f"Bearer {server.tokens['api']}"}, timeout=30
            ).status_code
            == 200
            for i in ids
        ),
        timeout=20,
    )


def test_text_search_finds_each_field_by_substring_and_nothing_else(server, seal):
    tag = secrets.token_hex(4)  # hex: no LIKE wildcards, and no other test's rows contain it
    in_message = [seal(message=f"card Declined{tag}Now #{n}", fingerprint=f"fp-m-{tag}") for n in range(3)]
    in_route = [seal(route=f"/pay/{tag}/capture", fingerprint=f"fp-r-{tag}")]
    in_type = [seal(error_type=f"shop.{tag}:Boom", fingerprint=f"fp-t-{tag}")]
    unrelated = [seal(message=f"{tag[:4]} only half of the tag", fingerprint=f"fp-u-{tag}")]
    everything = in_message + in_route + in_type + unrelated
    post(server, [b for _, b in everything])
    assert visible(server, [i for i, _ in everything])

    expected = {i for i, _ in in_message + in_route + in_type}
    assert set(all_pages(server, q=tag)) == expected
    assert set(all_pages(server, q=tag.upper())) == expected, "text search ignores case"
    assert set(all_pages(server, q=f"declined{tag}")) == {i for i, _ in in_message}, "a substring across words"
    assert set(all_pages(server, q=f"{tag}:Boom")) == {i for i, _ in in_type}
    assert runs(server, q=f"nosuch{tag}") == {"runs": [], "next_cursor": None}
    assert set(all_pages(server, q=f"{tag}", error_type=f"shop.{tag}:Boom")) == {in_type[0][0]}, "with a filter"
    # paged: three pages of one, without repeats, newest first
    paged = all_pages(server, q=f"declined{tag}", limit=1)
    assert sorted(paged) == sorted(i for i, _ in in_message) and len(paged) == 3


def test_short_and_wildcard_text_queries_still_match(server, seal):
    tag = secrets.token_hex(4)
    bundle_id, bundle = seal(message=f"k{tag}_x 50% off", fingerprint=f"fp-w-{tag}")
    post(server, [bundle])
    assert visible(server, [bundle_id])
    assert bundle_id in all_pages(server, q=f"{tag}_x"), "`_` in q is a LIKE wildcard, as before"
    assert bundle_id in all_pages(server, q=f"{tag}%off"), "`%` in q is a LIKE wildcard, as before"
    assert bundle_id in all_pages(server, q="50"), "two characters are too short for trigrams: scanned"


def test_cursor_pages_through_runs_started_at_the_same_instant_without_gaps_or_repeats(server, seal):
    tag = secrets.token_hex(4)
    route = f"/same-instant/{tag}"
    instant = datetime.now(UTC) - timedelta(minutes=5)
    made = [seal(route=route, started_at=instant, fingerprint=f"fp-c-{tag}") for _ in range(7)]
    later = seal(route=route, started_at=instant + timedelta(seconds=1), fingerprint=f"fp-c-{tag}")
    earlier = seal(route=route, started_at=instant - timedelta(seconds=1), fingerprint=f"fp-c-{tag}")
    post(server, [b for _, b in [*made, later, earlier]])
    assert visible(server, [i for i, _ in [*made, later, earlier]])

    for limit in (1, 2, 3, 50):
        ids = all_pages(server, route=route, limit=limit)
        assert ids == [later[0], *sorted((i for i, _ in made), reverse=True), earlier[0]], f"limit {limit}"


def test_an_invalid_cursor_is_refused_even_when_the_text_matches_nothing(server):
    project = httpx.get(
        f"{server.url}/v1/projects", headers={"authorization": f"Bearer {server.tokens['api']}"}, timeout=30
    ).json()["projects"][0]["id"]
    response = httpx.get(
        f"{server.url}/v1/projects/{project}/runs",
        params={"q": "nothing-matches-this", "cursor": "not-a-cursor"},
        headers={"authorization": f"Bearer {server.tokens['api']}"},
        timeout=30,
    )
    assert response.status_code == 400 and "invalid cursor" in response.json()["detail"]


def test_big_batches_keep_their_good_bundles_and_reject_a_forged_one_with_its_reason(server, seal):
    for _ in range(5):
        batch = [seal() for _ in range(6)]
        forged = bytearray(batch[2][1])
        forged[-1] ^= 0x01  # flip a signature bit
        bundles = [b for _, b in batch]
        bundles[2] = bytes(forged)
        answer = post(server, bundles)
        assert answer["accepted"] == [i for n, (i, _) in enumerate(batch) if n != 2]
        assert [(r["index"], r["bundle_id"], r["reason"]) for r in answer["rejected"]] == [(2, batch[2][0], "tampered")]


def test_the_verification_threads_give_the_same_verdicts_as_inline_checks(keys, seal):
    key_id, public = signing_public_key(load_capture_key(keys.capture))
    signers = {key_id: _public_key(public)}
    good = [seal()[1] for _ in range(5)]
    tampered = bytearray(good[1])
    tampered[-3] ^= 0x10
    bundles = [good[0], bytes(tampered), b"not a bundle at all", *good[2:]]
    inline = check_bundles(bundles, raw_signers(signers), "acme/shop")
    assert [(c.reason is None) for c in inline] == [True, False, False, True, True, True]
    assert inline[1].reason == "tampered" and inline[1].bundle_id == read_bundle(bundles[1]).bundle_id
    assert inline[2].reason == "not_a_bundle" and inline[2].bundle_id is None
    assert "no registered signing keys" in (check_bundles(good[:1], {}, "acme/shop")[0].message or "")

    verifier = Verifier(workers=1)
    try:
        assert verifier.wait_ready(timeout=120), "no verification threads"
        pooled = asyncio.run(verifier.check(bundles, signers, "acme/shop"))
    finally:
        verifier.close()
    assert pooled == inline
    assert asyncio.run(Verifier(workers=0).check(bundles, signers, "acme/shop")) == inline, "no workers: inline"
    split = Verifier(workers=3)  # 18 bundles: three chunks on three threads, verdicts back in batch order
    try:
        assert asyncio.run(split.check(bundles * 3, signers, "acme/shop")) == inline * 3
    finally:
        split.close()


def _public_key(encoded: str):
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(base64.b64decode(encoded))
