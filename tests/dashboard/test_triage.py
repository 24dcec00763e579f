"""Issue 17's triage pages, in Debian's Chromium against a real server and agent (see dashboard_fixtures.py):
the issue page (culprit, exception, latest run's facts, older and newer runs), the Error tab, the timeline's
time axis and failure mark, tab counts, readable values, logs, the agent URL, the one fitting regression
test, issue actions in the audit log, the favicon and the not-found page.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from dashboard_fixtures import RANDOM_UUID, Dashboard, Seeded, Shot, ingest, web_payload
from playwright.sync_api import expect
from server_process import FluxRunServer, fluxrun_server
from servers import free_port

from fluxrun.bundle import Sealer, load_capture_key
from fluxrun.model.export import build_summary
from fluxrun.scrub import default_scrubber
from fluxrun_server.auth import token_prefix

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def tab(page: Any, name: str) -> Any:
    """A run tab by its label; the accessible name also carries the tab's count ("Logs 1")."""
    return page.get_by_role("tab", name=re.compile(rf"^{name}\b"))


def test_issue_page_shows_culprit_exception_latest_run_and_steps_through_runs(
    dashboard: Dashboard, seeded: Seeded, shot: Shot
) -> None:
    page = dashboard.page
    dashboard.sign_in()
    page.goto(f"{dashboard.server.url}/#/issues/{seeded.issues['login']}")
    # Before any unlock, from the plaintext summary: where the app raised, and the newest run's facts.
    expect(page.get_by_test_id("issue-culprit")).to_have_text("shop/app.py:30 in login")
    run = page.get_by_test_id("issue-run")
    expect(run.locator("#run-title")).to_contain_text("Latest run")
    expect(run.get_by_test_id("fact-release")).to_have_text("1.4.0")
    expect(run.get_by_test_id("fact-environment")).to_have_text("production")
    expect(run.get_by_test_id("fact-route")).to_have_text("POST /login → 500")
    expect(run.get_by_test_id("fact-request-id")).to_have_text(f"req-{seeded.runs['login0'][:12]}")
    expect(run.get_by_test_id("culprit")).to_have_text("shop/app.py:30 in login")
    expect(run.get_by_test_id("exception-message")).to_have_text("'price'")

    # The exception with its source lines comes through the agent: app frames first, innermost on top.
    run.get_by_role("button", name="Show source lines (unlock through your agent)").click()
    app_frames = run.get_by_role("list", name="App frames").locator("li")
    expect(app_frames).to_have_count(2)
    expect(app_frames.first).to_contain_text("shop/app.py:30 in login")
    expect(app_frames.first).to_contain_text("price = item['price']")
    expect(app_frames.nth(1)).to_contain_text("shop/views.py:12 in login_view")
    expect(run.locator("details.library summary")).to_have_text("3 library frames")
    assert "fluxrun/middleware" not in run.inner_html(), "FluxRun's own frames are never shown"
    shot(page, "issue")

    # Older and newer runs of the issue, newest first.
    run.get_by_role("button", name="← Older run").click()
    expect(run.locator("#run-title")).to_contain_text("Run 2 of 3")
    expect(run.get_by_test_id("fact-request-id")).to_have_text(f"req-{seeded.runs['login1'][:12]}")
    assert f"run={seeded.runs['login1']}" in page.url, "the chosen run is in the link"
    run.get_by_role("button", name="← Older run").click()
    expect(run.get_by_test_id("fact-request-id")).to_have_text(f"req-{seeded.runs['login2'][:12]}")
    expect(run.get_by_role("button", name="← Older run")).to_be_disabled()
    run.get_by_role("button", name="Newer run →").click()
    run.get_by_role("button", name="Newer run →").click()
    expect(run.locator("#run-title")).to_contain_text("Latest run")
    expect(run.get_by_role("button", name="Newer run →")).to_be_disabled()


def test_error_tab_opens_first_with_summary_before_unlock_and_app_frames_after(
    dashboard: Dashboard, seeded: Seeded, shot: Shot
) -> None:
    page = dashboard.page
    dashboard.sign_in()
    page.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['login0']}")
    tabs = page.get_by_role("tab")
    expect(tabs.first).to_have_text(re.compile(r"^Error"))
    expect(tab(page, "Error")).to_have_attribute("aria-selected", "true")
    panel = page.get_by_role("tabpanel")
    # Locked: what the plaintext summary holds.
    expect(panel.get_by_test_id("exception-message")).to_have_text("'price'")
    expect(panel.get_by_test_id("culprit")).to_have_text("shop/app.py:30 in login")
    expect(panel).to_contain_text("builtins:KeyError")
    fingerprint = dashboard.server.api(f"/v1/runs/{seeded.runs['login0']}").json()["fingerprint"]
    expect(panel).to_contain_text(fingerprint)
    expect(panel.get_by_test_id("error-locked")).to_be_visible()
    shot(page, "run-error-locked")

    page.get_by_role("button", name="Unlock", exact=True).click()
    expect(page.get_by_test_id("unlock-state")).to_contain_text("masked")
    app_frames = panel.get_by_role("list", name="App frames").locator("li")
    expect(app_frames).to_have_count(2)
    expect(app_frames.first).to_have_attribute("data-in-app", "true")
    expect(app_frames.first).to_contain_text("shop/app.py:30 in login")
    library = panel.get_by_role("list", name="Library frames")
    expect(library).to_be_hidden()  # folded
    panel.get_by_text("3 library frames").click()
    expect(library.locator("li")).to_have_count(3)
    expect(library.locator("li").first).to_contain_text("fastapi/routing.py:301 in run_endpoint_function")
    assert "FluxRunMiddleware" not in panel.inner_html()
    shot(page, "run-error")

    # A real capture: the app frame raised inside `charge`, under FluxRun's capture wrapper, never shown.
    page.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['charge']}")
    expect(tab(page, "Error")).to_have_attribute("aria-selected", "true")
    expect(panel.get_by_test_id("culprit")).to_contain_text("fluxrun_dashboard_jobs.py:")
    expect(panel.get_by_test_id("culprit")).to_contain_text(" in charge")
    page.get_by_role("button", name="Unlock", exact=True).click()
    first = panel.get_by_role("list", name="App frames").locator("li").first
    expect(first).to_contain_text("in charge")
    expect(first).to_contain_text('account["rates"][currency]')
    assert "/fluxrun/" not in panel.inner_text()


def test_timeline_axis_failure_mark_tab_counts_readable_values_and_logs(
    dashboard: Dashboard, seeded: Seeded, shot: Shot
) -> None:
    page = dashboard.page
    dashboard.sign_in()
    page.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['login0']}?tab=timeline")
    for name, count in (("timeline", 7), ("network", 1), ("env", 2), ("time", 1), ("random", 1),
                        ("boundaries", 1), ("logs", 1)):  # fmt: skip
        expect(page.get_by_test_id(f"count-{name}")).to_have_text(str(count))
    axis = page.get_by_test_id("time-axis")
    expect(axis).to_contain_text("0.00 ms")
    expect(axis).to_contain_text("32 ms")
    expect(axis).to_contain_text("64 ms")
    expect(axis).to_contain_text("✕ KeyError")
    expect(page.get_by_test_id("failure-mark")).to_have_text(
        re.compile(r"KeyError raised out of the app at \+64 ms, when the run ended")
    )
    expect(page.locator(".waterfall .mark")).to_have_count(7)
    shot(page, "run-timeline")

    page.get_by_role("button", name="Unlock", exact=True).click()
    expect(page.get_by_test_id("unlock-state")).to_contain_text("masked")
    tab(page, "Randomness").click()
    value = page.get_by_role("table", name="random events").get_by_test_id("value")
    expect(value).to_have_text(RANDOM_UUID)
    assert "$t" not in page.get_by_role("tabpanel").inner_text()
    tab(page, "Boundaries").click()
    expect(page.get_by_role("tabpanel")).to_contain_text('accounts.load(7) → {"plan": "pro"}')

    tab(page, "Logs").click()
    row = page.get_by_role("table", name="logs events").locator("tbody tr")
    expect(row).to_have_count(1)
    started = dashboard.server.api(f"/v1/runs/{seeded.runs['login0']}").json()["started_at"]
    stamp = re.search(r"T(\d\d:\d\d:\d\d)", started)
    assert stamp
    expect(row.locator("td").first).to_contain_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}"))
    expect(row.locator("td").first).to_contain_text("+55 ms")
    expect(row.get_by_test_id("log-level")).to_have_text("WARNING")
    expect(row.locator("td").nth(2)).to_have_text("shop")
    expect(row.get_by_test_id("value")).to_contain_text(seeded.markers["login0"])
    shot(page, "run-logs")


def test_agent_url_editable_any_time_and_filled_by_a_sign_in_link(dashboard: Dashboard, browser: Any) -> None:
    page = dashboard.page
    nowhere = f"http://127.0.0.1:{free_port()}"
    dashboard.sign_in(agent_url=nowhere)
    status = page.get_by_role("button", name=re.compile("^Agent: "))
    expect(status).to_have_text("Agent: unreachable")
    # Change it from the header, signed in, without signing out.
    status.click()
    page.get_by_label("Agent URL").fill("ftp://example.test")
    page.get_by_role("button", name="Save and check").click()
    expect(page.get_by_role("alert").filter(has_text="starts with http:// or https://")).to_be_visible()
    page.get_by_label("Agent URL").fill(dashboard.agent.url + "/")
    page.get_by_role("button", name="Save and check").click()
    expect(status).to_have_text("Agent: connected")
    assert page.evaluate("localStorage.getItem('fluxrun.agentUrl')") == dashboard.agent.url

    # A sign-in link (what `fluxrun demo --serve` prints) fills the agent URL in a fresh browser.
    link = f"{dashboard.server.url}/?agent={quote(dashboard.agent.url, safe='')}"
    fresh = browser.new_context(viewport={"width": 1360, "height": 900})
    try:
        other = fresh.new_page()
        other.goto(link)
        expect(other.get_by_label("Agent URL")).to_have_value(dashboard.agent.url)
        assert "agent=" not in other.url, "the link's parameter is taken off the address"
        other.get_by_label("API key").fill(dashboard.server.tokens["api"])
        other.get_by_role("button", name="Sign in").click()
        expect(other.get_by_role("button", name="Agent: connected")).to_be_visible()

        # Signed in, a link naming another agent asks before switching; a link that is not http(s) is refused.
        other.goto(f"{dashboard.server.url}/?agent={quote(nowhere, safe='')}#/issues")
        banner = other.get_by_test_id("agent-link")
        expect(banner).to_contain_text(nowhere)
        assert other.evaluate("localStorage.getItem('fluxrun.agentUrl')") == dashboard.agent.url
        banner.get_by_role("button", name="Use this agent").click()
        expect(other.get_by_role("button", name="Agent: unreachable")).to_be_visible()
        assert other.evaluate("localStorage.getItem('fluxrun.agentUrl')") == nowhere
        other.goto(f"{dashboard.server.url}/?agent={quote('javascript:alert(1)', safe='')}#/issues")
        expect(other.get_by_role("alert").filter(has_text="The link's agent URL was not used")).to_be_visible()
        assert other.evaluate("localStorage.getItem('fluxrun.agentUrl')") == nowhere
    finally:
        fresh.close()


def pull_and_run(
    dashboard: Dashboard, keys: Any, command: str, code: str, folder: Path
) -> subprocess.CompletedProcess[str]:
    """Do what the page says: run its pull command, paste its test, run pytest on it as a developer would."""
    args = command.split("fluxrun pull ", 1)[1].split()
    folder.mkdir(parents=True)
    env = {**os.environ, "FLUXRUN_API_KEY": dashboard.server.tokens["api"]}
    pulled = subprocess.run([sys.executable, "-m", "fluxrun.cli.app", "pull", *args], env=env, cwd=folder,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    (folder / "test_pasted.py").write_text(code)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FLUXRUN_", "PYTEST_"))},
        "FLUXRUN_REPLAY_KEY": str(keys.replay),
        "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "test_pasted.py"],
        env=env, cwd=folder, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_regression_test_fits_the_issue_state_and_passes_where_it_should(
    dashboard: Dashboard, seeded: Seeded, keys: Any, shot: Shot, tmp_path: Path
) -> None:
    page = dashboard.page
    dashboard.sign_in()
    # `charge` still fails in the code the agent and the tests run: its open issue gets the reproduce test.
    page.goto(f"{dashboard.server.url}/#/issues/{seeded.issues['charge']}")
    expect(page.get_by_test_id("issue-status")).to_have_text("open")
    page.get_by_role("button", name="Create regression test").click()
    expect(page.get_by_test_id("test-kind")).to_have_attribute("data-kind", "reproduce")
    code = page.get_by_test_id("test-code").inner_text()
    assert code.count("@fluxrun.replay(") == 1 and 'expect="reproduce"' in code
    meaning = page.get_by_test_id("test-meaning")
    expect(meaning).to_contain_text('@fluxrun.replay(BUNDLE, expect="reproduce")')
    expect(meaning).to_contain_text("passes only if the code still fails the same way")
    shot(page, "regression")
    ran = pull_and_run(dashboard, keys, page.get_by_test_id("pull-command").inner_text(), code, tmp_path / "open")
    assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout + ran.stderr

    # `convert` is fixed in that code: resolve its issue and the page shows the guard alone, which passes.
    page.goto(f"{dashboard.server.url}/#/issues/{seeded.issues['convert']}")
    page.get_by_role("button", name="Resolve").click()
    expect(page.get_by_test_id("issue-status")).to_have_text("resolved")
    try:
        page.get_by_role("button", name="Create regression test").click()
        expect(page.get_by_test_id("test-kind")).to_have_attribute("data-kind", "fixed")
        code = page.get_by_test_id("test-code").inner_text()
        assert code.count("@fluxrun.replay(") == 1 and "expect=" not in code.split("@fluxrun.replay(", 1)[1]
        expect(page.get_by_test_id("test-meaning")).to_contain_text("the replay ended without the recorded failure")
        folder = tmp_path / "resolved"
        ran = pull_and_run(dashboard, keys, page.get_by_test_id("pull-command").inner_text(), code, folder)
        assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout + ran.stderr
    finally:
        page.get_by_role("button", name="Reopen").click()
        expect(page.get_by_test_id("issue-status")).to_have_text("open")


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory, keys: Any) -> Iterator[FluxRunServer]:
    """A server of its own: these tests add runs, which the shared seeded server's counts must not see."""
    with fluxrun_server(tmp_path_factory.mktemp("triage-server"), keys.capture) as srv:
        yield srv


def add_run(server: FluxRunServer, keys: Any, route: str = "/export") -> str:
    bundle_id = secrets.token_hex(16)
    payload = web_payload(bundle_id, "m", route=route, error="builtins:KeyError", message="'csv'", minutes_ago=1)
    summary = build_summary(payload, scrubber=default_scrubber(), duration_ns=3_000_000)
    sealer = Sealer(load_capture_key(keys.capture), sdk="tests", project="acme/shop")
    return ingest(server, sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id))


def test_resolve_ignore_until_more_events_and_reopen_are_in_the_audit_log(
    browser: Any, own_server: FluxRunServer, agent: Any, keys: Any, shot: Shot
) -> None:
    bundle_id = add_run(own_server, keys)
    [issue_id] = {r["issue_id"] for r in own_server.runs() if r["bundle_id"] == bundle_id}
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        d = Dashboard(page, own_server, agent, [])
        d.sign_in()
        page.goto(f"{own_server.url}/#/issues/{issue_id}")
        status = page.get_by_test_id("issue-status")
        expect(status).to_have_text("open")
        expect(page.get_by_role("button", name="Reopen")).to_be_disabled()

        page.get_by_role("button", name="Resolve").click()
        expect(status).to_have_text("resolved")
        page.get_by_role("button", name="Reopen").click()
        expect(status).to_have_text("open")
        page.get_by_label("more events").fill("2")
        page.get_by_role("button", name="Ignore").click()
        expect(status).to_have_text("ignored")
        expect(page.get_by_test_id("snooze")).to_have_text("Ignored until 2 more events (at 3 in all).")

        add_run(own_server, keys)  # one more: still ignored, one to go
        page.reload()
        expect(page.get_by_test_id("snooze")).to_have_text("Ignored until 1 more event (at 3 in all).")
        expect(status).to_have_text("ignored")
        add_run(own_server, keys)  # the second: the snooze runs out and the issue is open again
        page.reload()
        expect(status).to_have_text("open")
        activity = page.get_by_role("list", name="Issue activity")
        expect(activity.locator("li").first).to_contain_text("reopened: its snooze ran out")
        expect(activity).to_contain_text("ignored by api_key:fra_")
        expect(activity).to_contain_text("until 2 more events")
        shot(page, "issue-actions")
    finally:
        context.close()

    audit = json.loads(own_server.admin("audit", "acme"))
    mine = [(e["action"], e["actor"], e["detail"]) for e in audit if e["target"] == f"issue:{issue_id}"]
    assert [a for a, _, _ in mine] == ["issue.snooze_expired", "issue.ignore", "issue.reopen", "issue.resolve"]
    who = f"api_key:{token_prefix(own_server.tokens['api'])}"
    assert [actor for _, actor, _ in mine] == ["server", who, who, who]
    assert mine[1][2] == {"old": "open", "events": 2, "until_count": 3}


def test_favicon_and_unknown_route_shows_not_found(dashboard: Dashboard, shot: Shot) -> None:
    page = dashboard.page
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    dashboard.sign_in()
    icon = page.locator("link[rel=icon]")
    expect(icon).to_have_count(1)
    assert (icon.get_attribute("href") or "").startswith("data:image/svg+xml,")
    page.goto(f"{dashboard.server.url}/#/no/such/page?x=1")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(page.get_by_test_id("notfound-path")).to_have_text("#/no/such/page")
    assert page.url.endswith("#/no/such/page?x=1"), "no silent redirect"
    shot(page, "not-found")
    page.get_by_role("link", name="Go to the issues").click()
    expect(page.get_by_role("heading", name="Issues")).to_be_visible()
    assert not [u for u in failed if "favicon" in u], failed
