"""Entry points and handled exceptions in real server processes (issue 14, item 4).

A Litestar app in the raw ASGI form under uvicorn, and a Django project under gunicorn with its
`application = FluxRunWSGIMiddleware(application)`: each serves a failing request, the server is stopped, and
replay (with no `app=`) finds the recorded entry point and reproduces the same exception type and route
template, although the framework answered the 500 itself. Then `--fluxrun-bundles` guards choose each bundle's
entry point from the ini `fluxrun_app` mapping."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from servers import APPS, free_port, uvicorn_process

import fluxrun
from fluxrun.bundle import open_bundle, read_bundle

pytestmark = pytest.mark.slow
pytest_plugins = ["pytester"]


@contextmanager
def gunicorn_process(app: str, env: dict[str, str], app_dir: Path = APPS) -> Iterator[str]:
    """Start `gunicorn app` (one sync worker) on a free loopback port; yield its base URL; stop it at the end."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", app, "--chdir", str(app_dir), "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--log-level", "warning"],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"gunicorn {app} exited with {proc.returncode}:\n{log.read().decode()}")
                try:
                    httpx.get(url + "/", timeout=0.5)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"gunicorn {app} did not start within 30 s") from None
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def one_bundle(directory: Path, timeout: float = 20.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(directory.glob("*.fluxrun"))
        if files:
            time.sleep(0.2)  # written whole (the sink renames into place), but let a second one show up
            files = sorted(directory.glob("*.fluxrun"))
            assert len(files) == 1, files
            return files[0]
        time.sleep(0.05)
    raise AssertionError(f"no bundle in {directory} within {timeout} s")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys) -> dict[str, Path]:
    """One failing request captured by each real server, which is then stopped."""
    out: dict[str, Path] = {}
    litestar_dir = tmp_path_factory.mktemp("litestar-bundles")
    env = {"FLUXRUN_CAPTURE_KEY": str(keys.capture), "FLUXRUN_DIR": str(litestar_dir)}
    with uvicorn_process("litestar_shop:app", env) as url:
        assert httpx.get(f"{url}/orders/3").status_code == 500
        out["litestar"] = one_bundle(litestar_dir)
    django_dir = tmp_path_factory.mktemp("django-bundles")
    env = {"FLUXRUN_CAPTURE_KEY": str(keys.capture), "FLUXRUN_DIR": str(django_dir)}
    with gunicorn_process("djshop.wsgi:application", env) as url:
        assert httpx.get(f"{url}/invoices/5").status_code == 500
        out["django"] = one_bundle(django_dir)
    return out


@pytest.fixture
def app_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(APPS))  # replay imports the app from its project folder
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    monkeypatch.delenv("FLUXRUN_REPLAY_APP", raising=False)


EXPECTED = {
    "litestar": ("litestar_shop:app", "/orders/{order_id}", "GET"),
    "django": ("djshop.wsgi:application", "/invoices/<int:invoice_id>", "GET"),
}


@pytest.mark.parametrize("framework", ["litestar", "django"])
def test_the_handled_exception_and_route_template_are_recorded(bundles, keys, framework):
    data = bundles[framework].read_bytes()
    summary = read_bundle(data).summary
    entry, route, method = EXPECTED[framework]
    assert (summary["entry"], summary["route"], summary["method"]) == (entry, route, method)
    assert summary["status"] == 500 and summary["outcome"] == "error"
    assert summary["error"]["type"] == "builtins:KeyError"
    payload = open_bundle(data, keys.replay_key).payload
    assert "handled_exception" not in payload["outcome"]
    assert [e["call"] for e in payload["events"] if e["kind"] == "host"] == [
        "db.load_order" if framework == "litestar" else "billing.load_invoice"
    ]


@pytest.mark.parametrize("framework", ["litestar", "django"])
def test_replay_finds_the_recorded_entry_point_and_reproduces_the_same_error(bundles, keys, app_dir, framework):
    result = fluxrun.replay.run(bundles[framework], keys.replay)  # no app=: the recorded, marked entry point
    assert result.entry == EXPECTED[framework][0]
    assert result.outcome == "reproduced", result.summary()
    assert result.new.error_type == result.original.error_type == "builtins:KeyError"
    assert result.new.status == 500
    assert result.new.fingerprint == result.original.fingerprint


def test_bundle_guards_take_each_entry_point_from_the_ini_mapping(bundles, keys, pytester, monkeypatch):
    monkeypatch.setenv("FLUXRUN_REPLAY_KEY", str(keys.replay))
    monkeypatch.delenv("FLUXRUN_REPLAY_APP", raising=False)
    folder = pytester.path / "bundles"
    folder.mkdir()
    for name, path in bundles.items():
        shutil.copy(path, folder / f"{name}.fluxrun")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]))
    args = ("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles", "--no-fluxrun-isolate", "-W", "ignore")
    pytester.makeini(
        "[pytest]\nfluxrun_app =\n"
        "    GET /orders/* = litestar_shop:fixed_app\n"
        "    /invoices/* = djshop.wsgi:fixed_application\n"
    )
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=2)  # both fixed entry points chosen by route
    pytester.makeini("[pytest]\nfluxrun_app =\n    /invoices/* = djshop.wsgi:fixed_application\n")
    result = pytester.runpytest_subprocess(*args)  # the Litestar bundle: its recorded entry, still failing
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*expected the failure to be fixed, but it is reproduced*"])
    cli = pytester.runpytest_subprocess(*args, "--fluxrun-app", "djshop.wsgi:* = djshop.wsgi:fixed_application",
                                        "--fluxrun-app", "litestar_shop:fixed_app")  # fmt: skip
    cli.assert_outcomes(passed=2)  # the command line: a glob on the recorded entry, and a default
