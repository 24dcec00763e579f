"""openai, streamed: the usual loop over `stream=True` chunks raises IndexError on the usage chunk (empty
`choices`) and abandons the stream half-way. Replayed offline a day later without OPENAI_API_KEY, the chunks
the app consumed are served again with their boundaries and the same IndexError comes back; the fixed loop
(skip chunks without choices) passes."""

from __future__ import annotations

import httpx
import pytest
from harness import app_server, assert_stopped, hits, one_bundle, replay_offline, upstream

from fluxrun.bundle import open_bundle

pytestmark = pytest.mark.slow

SECRET = "sk-fidelity-openai-0123456789"
SETTINGS = ("OPENAI_API_KEY", "OPENAI_BASE_URL")


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    capture_dir = tmp_path_factory.mktemp("openai-streamed")
    with upstream("fake_openai:app") as api:
        env = {"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": f"{api}/v1"}
        with app_server("openai_stream_app:app", keys, capture_dir, env) as url:
            response = httpx.post(f"{url}/drafts", json={"prompt": "Say what FluxRun does."}, timeout=30)
            bundle = one_bundle(capture_dir)
            assert hits(api) == 1
    assert_stopped(api)
    return bundle, response


def test_the_loop_raised_index_error_on_the_usage_chunk(capture, keys):
    bundle, response = capture
    assert response.status_code == 500
    payload = open_bundle(bundle.read_bytes(), keys.replay_key).payload
    assert payload["outcome"]["error"]["type"] == "builtins:IndexError"
    (fetch,) = [e for e in payload["events"] if e["kind"] == "http"]
    assert fetch["data"]["stream"] is True
    body = fetch["data"]["response"]["body"]
    assert body["complete"] is False  # abandoned: the app never read the end of the stream
    assert len(body["chunks"]) == 9  # role, six words, finish, usage + [DONE]: one network chunk each


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, _ = capture
    return replay_offline(bundle, "openai_stream_app:app", keys, env_without=SETTINGS, times=3)


def test_replay_serves_the_consumed_chunks_and_reproduces_the_index_error(replays):
    replays.assert_reproduced(times=3, max_seconds=1.0)
    assert all(run["new"]["error_type"] == "builtins:IndexError" for run in replays.runs)


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_loop_skips_the_usage_chunk(capture, keys):
    bundle, _ = capture
    replays = replay_offline(bundle, "openai_stream_app:fixed_app", keys, env_without=SETTINGS, expect="fixed", times=1)
    run = replays.assert_fixed()
    assert run["status"] == 200 and run["body"] == '{"draft":"FluxRun turns failures into tests."}'
