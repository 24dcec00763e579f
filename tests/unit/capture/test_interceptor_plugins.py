"""Interceptors for any client, registered by other distributions in the `fluxrun.interceptors` entry point group.

Each test lays out a tiny installed distribution (a `*.dist-info` folder with `entry_points.txt`) on sys.path:
a queue client, its FluxRun interceptor written with `fluxrun.interceptors.api`, and broken plugins beside it.
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
from pathlib import Path

import pytest

import fluxrun
from fluxrun._internal import _reported, internal_errors

CLIENT = '''
SENT = []


class Queue:
    """A client whose publish is a write that must not run again at replay."""

    def publish(self, topic, body):
        SENT.append((topic, body))
        if topic == "refused":
            raise PermissionError(f"topic {topic} refused")
        return {"id": len(SENT), "topic": topic}
'''

INTERCEPTOR = """
import wrapt

import fake_queue
from fluxrun.interceptors.api import Patch, active, answer, decode, encode, fields_match, record, replaying

KIND = "queue"


def publish(wrapped, instance, args, kwargs):
    scope = active()
    if scope is None:
        return wrapped(*args, **kwargs)
    data = {"message": encode(list(args))}
    if replaying(scope):
        return decode(answer(scope, KIND, "queue publish", fields_match(data))["data"]["result"])
    return record(scope, KIND, "queue publish", data, lambda: wrapped(*args, **kwargs))


class QueueInterceptor:
    kind = KIND

    def patches(self):
        original = vars(fake_queue.Queue)["publish"]
        return [Patch(fake_queue.Queue, "publish", wrapt.FunctionWrapper(original, publish))]
"""

BROKEN = """
class ExplodingInterceptor:
    kind = "exploding"

    def patches(self):
        raise RuntimeError("plugin exploded while patching")


NOT_AN_INTERCEPTOR = 42
"""

ENTRY_POINTS = """
[fluxrun.interceptors]
queue = fake_queue_fluxrun:QueueInterceptor
missing = fake_missing_module:Interceptor
exploding = fake_broken_plugins:ExplodingInterceptor
not-one = fake_broken_plugins:NOT_AN_INTERCEPTOR
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_queue.py").write_text(textwrap.dedent(CLIENT))
    (site / "fake_queue_fluxrun.py").write_text(textwrap.dedent(INTERCEPTOR))
    (site / "fake_broken_plugins.py").write_text(textwrap.dedent(BROKEN))
    dist = site / "fake_queue_fluxrun-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-queue-fluxrun\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    import fake_queue

    fake_queue.SENT.clear()
    yield fake_queue
    for name in ("fake_queue", "fake_queue_fluxrun", "fake_broken_plugins"):
        sys.modules.pop(name, None)


def order(queue_module: object, topic: str) -> None:
    try:
        receipt = queue_module.Queue().publish(topic, {"order": 7})
    except PermissionError as exc:  # the recorded error comes back as the same class
        raise LookupError(f"no route: {exc}") from exc
    raise RuntimeError(f"after publishing {receipt}")


def test_a_plugin_records_its_client_and_replay_answers_it_without_publishing(plugins, capture_with, keys):
    captured = capture_with()

    @fluxrun.capture
    def place(topic: str) -> None:
        order(plugins, topic)

    with pytest.raises(RuntimeError) as raised:
        place("orders")
    assert plugins.SENT == [("orders", {"order": 7})]
    (event,) = captured.events("queue")
    assert event["call"] == "queue publish" and event["data"]["result"] == {"id": 1, "topic": "orders"}
    (path,) = captured.files()
    fluxrun.shutdown()
    for isolate in (True, False):
        result = fluxrun.replay.run(path, keys.replay, app=place, isolate=isolate)
        assert result.outcome == "reproduced", (isolate, result.summary())
        assert result.new.message == str(raised.value)
        assert result.served["queue"] == 1
    assert plugins.SENT == [("orders", {"order": 7})]  # replays published nothing


def test_a_plugin_call_made_differently_at_replay_is_a_divergence(plugins, capture_with, keys):
    captured = capture_with()

    @fluxrun.capture
    def place(topic: str) -> None:
        order(plugins, topic)

    with pytest.raises(RuntimeError):
        place("orders")
    (path,) = captured.files()
    fluxrun.shutdown()
    with pytest.raises(fluxrun.ReplayDivergence) as raised:
        fluxrun.replay.run(path, keys.replay, app=lambda topic: order(plugins, "payments"), isolate=False)
    message = str(raised.value)
    assert "queue publish has no recorded answer" in message
    assert "'orders'" in message and "'payments'" in message
    assert len(plugins.SENT) == 1


def test_a_plugins_recorded_error_is_raised_again(plugins, capture_with, keys):
    captured = capture_with()

    @fluxrun.capture
    def place(topic: str) -> None:
        order(plugins, topic)

    with pytest.raises(LookupError, match="no route: topic refused refused"):
        place("refused")
    (path,) = captured.files()
    fluxrun.shutdown()
    result = fluxrun.replay.run(path, keys.replay, app=place, isolate=False)
    assert result.outcome == "reproduced" and result.new.error_type == "builtins:LookupError"
    assert result.new.message == "no route: topic refused refused"
    assert len(plugins.SENT) == 1


def test_broken_plugins_are_reported_once_and_never_break_the_app(plugins, capture_with, caplog):
    _reported.difference_update({w for w in _reported if "interceptor plugin" in w})  # earlier tests loaded them
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        capture_with()
        fluxrun.shutdown()
        capture_with()  # a second installation: the same failures, not reported again
    reports = [r.getMessage() for r in caplog.records if "interceptor plugin" in r.getMessage()]
    assert len(reports) == 3, reports
    assert any("missing" in r and "fake_missing_module" in r for r in reports)
    assert any("exploded while patching" in r for r in reports)
    assert any("NOT_AN_INTERCEPTOR" in r and "not an interceptor" in r for r in reports)
    assert sum(n for where, n in internal_errors.items() if "interceptor plugin" in where) >= 6
    assert plugins.Queue().publish("direct", 1) == {"id": 1, "topic": "direct"}  # the good plugin still works


def test_shutdown_restores_the_plugins_patches(plugins, capture_with):
    original = vars(plugins.Queue)["publish"]
    capture_with()
    assert vars(plugins.Queue)["publish"] is not original
    fluxrun.shutdown()
    assert vars(plugins.Queue)["publish"] is original


def test_the_worked_example_in_the_docs_is_the_redis_interceptor():
    docs = (Path(__file__).parents[3] / "docs" / "interceptors.md").read_text()
    assert "fluxrun.interceptors" in docs and "RedisInterceptor" in docs
    assert "record(" in docs and "answer(" in docs and "fields_match(" in docs
