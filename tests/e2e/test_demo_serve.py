"""`fluxrun demo --serve` without --dir, as a user runs it: it prints a sign-in link that fills in its agent's
URL, and Ctrl-C stops everything and removes its temporary folder (which holds replay.key)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

pytestmark = pytest.mark.slow

FLUXRUN = str(Path(sys.executable).with_name("fluxrun"))


def test_demo_serve_prints_a_sign_in_link_and_ctrl_c_removes_its_folder(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen(
        [FLUXRUN, "demo", "--serve"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(temp), "COLUMNS": "300"},
        start_new_session=True,  # its own process group, as a terminal's foreground job: Ctrl-C reaches them all
    )
    try:
        assert proc.stdout is not None
        output = ""
        deadline = time.monotonic() + 240
        while "serving until Ctrl-C" not in output:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, output
            output += line
        folder = Path(re.search(r"FluxRun demo in (\S+)", output).group(1))  # type: ignore[union-attr]
        assert folder.parent == temp and (folder / "keys" / "replay.key").exists()
        server = re.search(r"dashboard (\S+) \(sign in", output).group(1)  # type: ignore[union-attr]
        agent = re.search(r"agent (http://\S+),", output).group(1)  # type: ignore[union-attr]
        link = re.search(r"sign in: (\S+)", output).group(1)  # type: ignore[union-attr]
        parts = urlsplit(link)
        assert f"{parts.scheme}://{parts.netloc}" == server and parts.path == "/"
        assert parse_qs(parts.query) == {"agent": [agent]}  # what the dashboard's sign-in form fills in
        assert httpx.get(f"{agent}/v1/health", timeout=10).status_code == 200
        assert httpx.get(link, timeout=10).status_code == 200  # the dashboard itself answers the link

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
        assert proc.stdout.read().count("cleaned up") == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert not folder.exists(), sorted(str(p) for p in folder.rglob("*"))[:20]
    assert list(temp.iterdir()) == []
