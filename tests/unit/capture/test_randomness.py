"""Randomness: random module functions, uuid, os.urandom, secrets — with the values produced."""

from __future__ import annotations

import os
import random
import secrets
import uuid

import pytest

import fluxrun
from fluxrun.model.values import decode


def test_random_functions_are_recorded_with_their_results(captured):
    seen = []

    @fluxrun.capture
    def job():
        seen.append(random.random())
        seen.append(random.randint(1, 6))
        seen.append(random.choice(["a", "b", "c"]))
        seen.append(random.sample(range(100), 3))
        seen.append(random.uniform(1.0, 2.0))
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    events = captured.events("random")
    assert [e["call"] for e in events] == [
        "random.random", "random.randint", "random.choice", "random.sample", "random.uniform",
    ]  # fmt: skip
    assert [decode(e["data"]["value"]) for e in events] == seen


def test_shuffle_records_the_permutation_it_applied(captured):
    items = list("abcdefgh")
    original = list(items)

    @fluxrun.capture
    def job():
        random.shuffle(items)
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    (event,) = captured.events("random")
    order = event["data"]["permutation"]
    assert [original[i] for i in order] == items


def test_shuffle_consumes_the_generator_like_the_real_one(captured):
    random.seed(7)
    expected = list(range(20))
    random.shuffle(expected)

    @fluxrun.capture
    def job():
        random.seed(7)
        got = list(range(20))
        random.shuffle(got)
        return got

    assert job() == expected


def test_uuid_urandom_and_secrets_are_recorded_once_each(captured):
    seen = []

    @fluxrun.capture
    def job():
        seen.append(uuid.uuid4())
        seen.append(os.urandom(8))
        seen.append(secrets.token_hex(8))
        seen.append(secrets.randbelow(1000))
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    events = captured.events("random")
    # uuid4 reads os.urandom and token_hex calls token_bytes: nested calls belong to the outer one
    assert [e["call"] for e in events] == [
        "uuid.uuid4",
        "os.urandom",
        "secrets.token_hex",
        "secrets.randbelow",
    ]
    assert [decode(e["data"]["value"]) for e in events] == seen


@pytest.mark.anyio
async def test_async_code_records_randomness(captured):
    @fluxrun.capture
    async def job():
        return random.random(), uuid.uuid4(), 1 / 0

    with pytest.raises(ZeroDivisionError):
        await job()
    assert [e["call"] for e in captured.events("random")] == ["random.random", "uuid.uuid4"]
