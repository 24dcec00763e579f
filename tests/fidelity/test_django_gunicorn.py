"""Django under gunicorn: `application = fluxrun.FluxRunWSGIMiddleware(get_wsgi_application())` in the project's
wsgi.py, served by gunicorn's sync worker with `--preload` (`fluxrun.init()` runs in the master, the request is
captured in the forked worker). The daily report view sums the report service's regions (its own process,
through `requests`); one region has no `sum` yet: KeyError, which Django answers as its own 500.

Captured, both processes stopped, replayed offline a day later without DJANGO_SETTINGS_MODULE,
DJANGO_SECRET_KEY, REPORTS_URL and REPORTS_TOKEN and with no `app=`: replay finds the recorded entry point
(importing the project, settings included, as a CI checkout has it) and reproduces the same KeyError and
fingerprint three times, the route template recorded. The fixed project then replays as `fixed`.
"""

from __future__ import annotations

import sys

import httpx
import pytest
from client_harness import APPS, UPSTREAMS, capture_env, server_process, uvicorn_on
from harness import assert_stopped, hits, one_bundle, replay_offline
from servers import free_port

from fluxrun.bundle import open_bundle, read_bundle

pytestmark = pytest.mark.slow

TOKEN = "rt_live_fidelity_reports_7"
SECRET_KEY = "django-prod-secret-fidelity-9f2c"
SETTINGS = ("DJANGO_SETTINGS_MODULE", "DJANGO_SECRET_KEY", "REPORTS_URL", "REPORTS_TOKEN")
ENTRY = "django_shop.wsgi:application"
ROUTE = "/reports/<str:day>/total"


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    folder = tmp_path_factory.mktemp("django-gunicorn")
    with uvicorn_on("fake_services:app", free_port(), UPSTREAMS) as reports:
        project = {"DJANGO_SETTINGS_MODULE": "django_shop.settings", "DJANGO_SECRET_KEY": SECRET_KEY,
                   "REPORTS_URL": reports.url, "REPORTS_TOKEN": TOKEN}  # fmt: skip
        env = capture_env(keys, folder / "bundles", project)
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", ENTRY, "--chdir", str(APPS), "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--worker-class", "sync", "--preload", "--log-level", "warning"]  # fmt: skip
        with server_process(f"gunicorn {ENTRY}", argv, port, env) as app:
            response = httpx.get(f"{app.url}/reports/2026-12-04/total", timeout=30)
            bundle = one_bundle(folder / "bundles")
        assert hits(reports.url) == 1
    assert_stopped(reports.url)
    assert_stopped(app.url)
    return bundle, response


def test_django_answers_500_and_the_worker_captured_the_key_error_and_route_template(capture, keys):
    bundle, response = capture
    assert response.status_code == 500
    assert "Server Error (500)" in response.text  # Django's own answer: nothing raised through the middleware
    data = bundle.read_bytes()
    summary = read_bundle(data).summary
    assert (summary["entry"], summary["method"], summary["status"]) == (ENTRY, "GET", 500)
    assert summary["route"] == ROUTE, summary
    assert summary["outcome"] == "error" and summary["error"]["type"] == "builtins:KeyError"
    culprit = summary["error"]["culprit"]
    assert (culprit["module"], culprit["function"]) == ("django_shop.views", "daily_total.<locals>.<genexpr>")
    assert TOKEN not in str(summary) and SECRET_KEY not in str(summary)
    payload = open_bundle(data, keys.replay_key).payload
    assert payload["outcome"]["error"]["message"] == "'sum'"
    assert [e["kind"] for e in payload["events"]].count("http") == 1


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, _ = capture
    return replay_offline(bundle, ENTRY, keys, env_without=SETTINGS, times=3, name_app=False)


def test_replay_with_no_app_finds_the_entry_point_and_reproduces_the_key_error(replays):
    # nothing imported the app beforehand, so each isolated replay imports it (framework included) in its own
    # child: that import, not a real wait, is what the looser bound allows for
    replays.assert_reproduced(times=3, max_seconds=5.0)
    for run in replays.runs:
        assert run["entry"] == ENTRY
        assert run["new"]["error_type"] == "builtins:KeyError" and run["new"]["status"] == 500
        assert run["status"] == 500  # Django's own answer, as in production
        assert run["served"]["http"] == 1


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_project_passes(capture, keys):
    bundle, _ = capture
    fixed = replay_offline(
        bundle, "django_shop.wsgi:fixed_application", keys, env_without=SETTINGS, expect="fixed", times=1
    )
    run = fixed.assert_fixed()
    assert run["status"] == 200
    body = httpx.Response(200, content=run["body"]).json()
    assert body == {"day": "2026-12-04", "total": 1500, "open": ["south"]}
