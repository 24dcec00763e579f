"""`fluxrun demo`, the README's first command: the whole loop with real processes on loopback.

server (uvicorn) <- shop (uvicorn, FLUXRUN_DSN) ships the failure; agent unlocks it; `fluxrun pull`; a pytest
replay fails, the fix is applied, it passes, and the report marks the issue guarded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

STEPS = [
    r" 1\. keys: generated capture\.key for the app and replay\.key for you in ",
    r" 2\. server: `fluxrun server` at http://127\.0\.0\.1:\d+ \(embedded",
    r" 3\. project: workspace demo, project demo/shop with signing key sig_\w+, ingest token frt_",
    r" 4\. agent: `fluxrun agent` at http://127\.0\.0\.1:\d+: the only process holding replay\.key",
    r" 5\. shop: demo_shop\.py under uvicorn",
    r" 6\. request: GET /orders/1/total → 200 .*not kept",
    r" 7\. request: GET /orders/7/total → 500",
    r" 8\. shipped: .* issue 1 KeyError: 'unit_price' on /orders/\{order_id\}/total \(open, 1 run",
    r" 9\. unlock: .* \d+ events, [1-9]\d* secret values? masked",
    r"10\. pull: `fluxrun pull issue:1 --to tests/fluxrun/` wrote orders-order-id-total-\w+-\w+\.fluxrun",
    r"11\. test: wrote tests/test_regression\.py",
    r"12\. pytest: 1 failed .* reproduced the KeyError",
    r"13\. fix: demo_shop\.py now reads both price schemas",
    r"14\. pytest: 1 passed .* reported 1 replay outcomes? to http://127\.0\.0\.1:\d+: issue 1 guarded",
    r"15\. guarded: issue 1 is guarded; dashboard: http://127\.0\.0\.1:\d+/",
]


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fluxrun.cli.app", "demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "COLUMNS": "200"},
    )


def test_demo_runs_the_whole_loop_and_cleans_up(tmp_path: Path) -> None:
    result = demo(cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for pattern in STEPS:
        assert any(re.match(pattern, line) for line in lines), f"no line matches {pattern!r}:\n{result.stdout}"
    folder = Path(re.search(r"FluxRun demo in (\S+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert not folder.exists() and f"cleaned up {folder}" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_demo_keeps_its_folder_and_serves_until_interrupted(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxrun.cli.app", "demo", "--dir", str(folder), "--serve"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "300"},
        start_new_session=True,  # so a failing test can stop the demo's server, agent and shop with it
    )
    try:
        assert proc.stdout is not None
        output = ""
        deadline = time.monotonic() + 240
        while "serving until Ctrl-C" not in output:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, output
            output += line
        server, api_key = re.search(r"dashboard (\S+) \(sign in with API key (fra_\S+)\)", output).groups()  # type: ignore[union-attr]
        issue = httpx.get(f"{server}/v1/issues/1", headers={"authorization": f"Bearer {api_key}"}, timeout=10).json()
        assert issue["status"] == "guarded"
        assert sorted(r["outcome"] for r in issue["regression_runs"]) == ["fixed", "reproduced"]  # before, after
        proc.send_signal(signal.SIGTERM)  # like Ctrl-C: the demo stops its processes and exits 0
        assert proc.wait(60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server}/healthz", timeout=2)  # the server went with the demo

    # what the developer keeps: keys, the pulled bundle, the test, the fixed app, the agent's audit log
    assert (folder / "keys" / "replay.key").exists() and (folder / "tests" / "test_regression.py").exists()
    assert len(list((folder / "tests" / "fluxrun").glob("*.fluxrun"))) == 1
    assert "fixed: the upstream answers" in (folder / "demo_shop.py").read_text()
    audit = [json.loads(line) for line in (folder / "agent-audit.log").read_text().splitlines()]
    assert [(a["action"], a["result"]) for a in audit] == [("unlock", "allowed")]
    # the server's files never hold the replay key, nor plaintext only the payload has: the customer's
    # credential and the upstream's answer (the summary's scrubbed error message is plaintext by design)
    (recipient,) = json.loads((folder / "keys" / "replay.key").read_text())["recipients"]
    private = recipient["private"].encode()
    server_files = [p for p in (folder / "server").rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in server_files)
    for path in server_files:
        data = path.read_bytes()
        assert b"customer-session-7f3a9c" not in data and private not in data and b'"currency"' not in data, path


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    result = demo("--dir", str(tmp_path / "taken"), cwd=tmp_path)
    assert result.returncode == 1
    assert "is not empty; give --dir a new folder" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert (tmp_path / "taken" / "file").read_text() == "mine"


def test_a_demo_process_whose_port_was_taken_is_started_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A free port is free only when looked at: the demo's server finds its port taken and starts on the next."""
    from fluxrun_demo import processes

    with contextlib.ExitStack() as stack:
        taken = stack.enter_context(socket.socket())
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], processes.free_port()])
        monkeypatch.setattr(processes, "free_port", lambda: next(ports))
        tried: list[int] = []

        def command(port: int) -> tuple[list[str], dict[str, str]]:
            tried.append(port)
            env = {"FLUXRUN_SERVER_DATA_DIR": str(tmp_path / "server"), "FLUXRUN_SERVER_PORT": str(port)}
            return ["fluxrun.cli.app", "server"], processes.clean_env(env)

        server = processes.start_on_free_port("server", command, health="/healthz", cwd=tmp_path, logs=tmp_path)
        stack.callback(server.stop)
        assert tried[0] == taken.getsockname()[1] and len(tried) == 2
        assert server.url == f"http://127.0.0.1:{tried[1]}"
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
