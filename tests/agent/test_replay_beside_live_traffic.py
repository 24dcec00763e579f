"""An app that mounts the agent keeps serving while a replay runs: the replay happens in its own child
process, so nothing it blocks (sockets, DNS) touches the app's own live connections."""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

import fluxrun
import fluxrun.agent

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
ROUNDS = 6_000_000  # about a second or more of CPU at capture and again at replay


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def busy_bundle(keys, tmp_path: Path, for_acme_shop) -> bytes:
    sys.path.insert(0, str(HERE))
    import fluxrun_busy_jobs

    fluxrun.init(directory=tmp_path / "bundles", capture_key=keys.capture)
    try:
        with pytest.raises(KeyError):
            fluxrun_busy_jobs.busy_charge(ROUNDS)
        assert fluxrun.flush(5.0)
    finally:
        fluxrun.shutdown()
    [path] = (tmp_path / "bundles").glob("*.fluxrun")
    return for_acme_shop(path.read_bytes())  # captured to a folder: sealed again for the server's project


def test_live_requests_succeed_while_the_mounted_agent_replays(server, keys, pinned_grant_key, busy_bundle, tmp_path):
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    upstream_url = f"http://127.0.0.1:{upstream.server_address[1]}/"

    app = FastAPI()

    @app.get("/live")
    def live() -> dict[str, int]:  # the app's own outbound call, as a real route makes
        return {"upstream": httpx.get(upstream_url, timeout=10).status_code}

    fluxrun.agent.mount(
        app, replay_key=keys.replay, grant_key=pinned_grant_key, project="acme/shop", audit_log=tmp_path / "a.jsonl"
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = threading.Thread(target=web.run, kwargs={"sockets": [listener]}, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while not web.started:
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        bundle_id = server.ingest(busy_bundle)
        grant = server.grant(bundle_id, "replay").json()["grant"]
        answer: dict[str, httpx.Response] = {}

        def replay() -> None:
            body = {"grant": grant, "bundle": base64.b64encode(server.bundle(bundle_id)).decode()}
            answer["replay"] = httpx.post(f"{base}/_fluxrun/v1/replay", json=body, timeout=120)

        stop = tmp_path / "stop"
        # live requests from another process, ten at a time, until told to stop: (start, end, status) each
        load = subprocess.Popen(
            [sys.executable, "-c", (
                "import httpx, json, os, sys, time, concurrent.futures as f\n"
                "def worker(_):\n"
                "    seen = []\n"
                "    with httpx.Client(timeout=30) as client:\n"
                "        while not os.path.exists(sys.argv[2]):\n"
                "            start = time.time()\n"
                "            try: status = client.get(sys.argv[1]).status_code\n"
                "            except Exception as e: status = repr(e)\n"
                "            seen.append((start, time.time(), status))\n"
                "    return seen\n"
                "with f.ThreadPoolExecutor(10) as pool: print(json.dumps(sum(pool.map(worker, range(10)), [])))\n"
            ), f"{base}/live", str(stop)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip
        time.sleep(2)  # the load process imports httpx and starts sending
        began = time.time()
        replay()
        ended = time.time()
        stop.touch()
        out, _ = load.communicate(timeout=60)
        requests = json.loads(out)
        during = [r for r in requests if r[0] < ended and r[1] > began]
        assert len(during) >= 50, f"only {len(during)} live requests overlapped the replay: raise ROUNDS"
        assert [r[2] for r in requests] == [200] * len(requests), [r[2] for r in requests if r[2] != 200][:5]
        assert answer["replay"].status_code == 200, answer["replay"].text
        assert answer["replay"].json()["outcome"] == "reproduced", answer["replay"].text
        assert "network namespace" in answer["replay"].json()["isolation"]
    finally:
        web.should_exit = True
        serving.join(10)
        listener.close()
        upstream.shutdown()
        upstream.server_close()
