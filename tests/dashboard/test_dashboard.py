"""The dashboard in Debian's Chromium against a real server and a real agent (see conftest.py).

Each test drives the page the way a triager would and saves a screenshot of the page it ends on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_fixtures import Dashboard, Seeded, Shot
from playwright.sync_api import expect
from servers import free_port

pytestmark = pytest.mark.slow


def issue_rows(d: Dashboard) -> Any:
    return d.page.get_by_role("table", name="Issues").locator("tbody tr")


def test_sign_in_refuses_bad_keys_then_lists_issues(dashboard: Dashboard, shot: Shot) -> None:
    page = dashboard.page
    page.goto(dashboard.server.url + "/")
    expect(page.get_by_role("heading", name="Sign in to FluxRun")).to_be_visible()
    shot(page, "sign-in")

    page.get_by_label("API key").fill("frt_not-a-query-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("An API key starts with fra_")

    page.get_by_label("API key").fill("fra_" + "A" * 38)  # well-formed prefix, wrong checksum
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("The server refused this API key")

    dashboard.sign_in()
    expect(issue_rows(dashboard)).to_have_count(6)  # login, checkout, search, and the three captured jobs
    assert "fra_" not in page.url, "the API key must never land in the URL"


def test_issues_filter_sort_keyboard_and_shareable_url(dashboard: Dashboard, seeded: Seeded, shot: Shot) -> None:
    page = dashboard.page
    dashboard.sign_in()
    rows = issue_rows(dashboard)
    expect(rows).to_have_count(6)
    sparkline = re.compile(r"Hourly failures of issue \d+: 3 in the last 24 hours")
    expect(page.get_by_role("img", name=sparkline)).to_be_visible()
    shot(page, "issues")

    page.get_by_role("button", name="Count").click()
    expect(page.get_by_role("columnheader", name="Count")).to_have_attribute("aria-sort", "descending")
    expect(rows.first).to_contain_text("KeyError")
    expect(rows.first.locator("td").nth(2)).to_have_text("3")
    page.get_by_role("button", name="Count").click()
    expect(page.get_by_role("columnheader", name="Count")).to_have_attribute("aria-sort", "ascending")
    expect(rows.last.locator("td").nth(2)).to_have_text("3")

    page.get_by_label("Status").select_option("guarded")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ValueError")
    page.get_by_label("Status").select_option("")
    page.get_by_label("Search", exact=True).fill("timed out")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("TimeoutError")
    assert "q=timed+out" in page.url

    # The URL carries the state: the same link in a fresh tab asks to sign in, then shows the same list.
    link = page.url
    other = page.context.new_page()
    other.goto(link)
    other.get_by_label("API key").fill(dashboard.server.tokens["api"])
    other.get_by_role("button", name="Sign in").click()
    expect(other.get_by_role("table", name="Issues").locator("tbody tr")).to_have_count(1)
    expect(other.get_by_label("Search", exact=True)).to_have_value("timed out")
    other.close()

    page.get_by_label("Search", exact=True).fill("no such failure anywhere")
    expect(page.get_by_role("status").filter(has_text="No issue matches these filters.")).to_be_visible()

    # Keyboard: rows are focusable, arrows move, Enter opens.
    page.get_by_label("Search", exact=True).fill("")
    page.get_by_label("Route").select_option("/checkout")
    expect(rows).to_have_count(1)
    page.get_by_label("Route").select_option("")
    expect(rows).to_have_count(6)
    rows.first.focus()
    page.keyboard.press("ArrowDown")
    expect(rows.nth(1)).to_be_focused()
    page.keyboard.press("ArrowUp")
    expect(rows.first).to_be_focused()
    issue = rows.first.get_attribute("data-issue")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"#/issues/{issue}$"))
    expect(page.get_by_text("Regression guard")).to_be_visible()


def test_runs_filters_and_cursor_pages(dashboard: Dashboard, seeded: Seeded, shot: Shot) -> None:
    page = dashboard.page
    dashboard.sign_in()
    page.get_by_role("link", name="Runs").click()
    table = page.get_by_role("table", name="Runs").locator("tbody tr")
    expect(table).to_have_count(len(seeded.runs))
    page.get_by_label("Route").fill("/login")
    page.get_by_role("button", name="Apply").click()
    expect(table).to_have_count(3)
    assert "route=%2Flogin" in page.url
    shot(page, "runs")

    page.get_by_label("Error type").fill("builtins:KeyError")
    page.get_by_label("Route").fill("")
    page.get_by_role("button", name="Apply").click()
    expect(table).to_have_count(5)  # three /login runs, and the captured charge and convert jobs

    # Cursor pages of two, newest first, without repeats, back and forth.
    page.goto(f"{dashboard.server.url}/#/runs?limit=2")
    seen: list[str] = []
    for _ in range(10):
        expect(table.first).to_be_visible()
        ids = [row.get_attribute("data-run") for row in table.all()]
        assert ids and not set(ids) & set(seen)
        seen += ids
        older = page.get_by_role("button", name="Older →")
        if older.is_disabled():
            break
        older.click()
        expect(table.first).not_to_have_attribute("data-run", ids[0])
    assert sorted(seen) == sorted(seeded.runs.values())
    page.get_by_role("button", name="← Newer").click()
    expect(table.first).to_have_attribute("data-run", seen[-3])  # the page before the last (9 runs: 2,2,2,2,1)

    # A time range (the inputs are UTC): 60 to 25 minutes ago holds the runs seeded 30 and 40 minutes ago.
    page.get_by_role("button", name="Clear").click()
    expect(table).to_have_count(len(seeded.runs))
    now = datetime.now(UTC)
    page.get_by_label("Since (UTC)").fill((now - timedelta(minutes=60)).strftime("%Y-%m-%dT%H:%M"))
    page.get_by_label("Until (UTC)").fill((now - timedelta(minutes=25)).strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Apply").click()
    expect(table).to_have_count(2)
    assert {row.get_attribute("data-run") for row in table.all()} == {seeded.runs["search0"], seeded.runs["login1"]}

    page.get_by_label("Text").fill("nothing matches this text")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status").filter(has_text="No runs match these filters.")).to_be_visible()


def test_unlock_through_agent_masked_and_protected_plaintext_never_reaches_server(
    dashboard: Dashboard, seeded: Seeded, keys: Any, shot: Shot
) -> None:
    page = dashboard.page
    marker = seeded.markers["login0"]
    dashboard.sign_in()  # a member key
    page.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['login0']}?tab=network")
    network = page.get_by_role("table", name="Network requests")
    expect(network).to_contain_text("auth.test/token")
    network.locator("tbody tr").first.click()
    expect(page.get_by_text("Unlock to see headers and bodies.")).to_be_visible()
    assert marker not in page.content(), "plaintext visible before any unlock"

    page.get_by_role("button", name="Unlock", exact=True).click()
    expect(page.get_by_test_id("unlock-state")).to_contain_text("masked")
    expect(page.get_by_test_id("response-body")).to_contain_text(marker)
    expect(page.get_by_test_id("response-body")).to_contain_text("[Filtered]")  # the upstream access_token
    expect(page.get_by_role("tabpanel")).to_contain_text("Authorization: Bearer [Filtered]")
    shot(page, "run-network")

    page.get_by_role("tab", name=re.compile(r"^Env\b")).click()
    env = page.get_by_role("table", name="env events")
    expect(env.locator("tr", has_text="SHOP_DB_PASSWORD")).to_contain_text("[Filtered]")
    expect(env.locator("tr", has_text="SHOP_REGION")).to_contain_text("eu-west-7")
    page.get_by_role("tab", name="Request", exact=True).click()
    expect(page.get_by_role("table", name="Request headers")).to_contain_text("Bearer [Filtered]")
    expect(page.get_by_test_id("request-body")).not_to_contain_text("hunter2-body")
    page.get_by_role("tab", name=re.compile(r"^Timeline\b")).click()
    expect(page.get_by_role("list", name="IO timeline").locator("li")).to_have_count(7)
    page.get_by_role("tab", name="Error", exact=True).click()
    expect(page.get_by_role("list", name="App frames")).to_contain_text("price = item['price']")
    for tab, text in (("Time", "1764322800.25"), ("Randomness", "uuid.uuid4"), ("Boundaries", "accounts.load"),
                      ("Logs", marker)):  # fmt: skip
        page.get_by_role("tab", name=re.compile(rf"^{tab}\b")).click()
        expect(page.get_by_role("tabpanel")).to_contain_text(text)
    shot(page, "run-detail")

    # A member may not see unmasked values; the server refuses the protected grant.
    page.get_by_role("button", name="Protected unlock (admin)").click()
    expect(page.get_by_test_id("unlock-error")).to_contain_text("only owner or admin")

    # An admin may: the agent answers with the plaintext.
    admin = page.context.new_page()
    admin.on("request", lambda r: dashboard.requests.append(
        {"url": r.url, "method": r.method, "headers": r.headers, "body": r.post_data_buffer or b""}))  # fmt: skip
    page.close()
    dashboard.page = admin
    dashboard.sign_in("admin")
    admin.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['login0']}?tab=env")
    admin.get_by_role("button", name="Protected unlock (admin)").click()
    expect(admin.get_by_test_id("unlock-state")).to_contain_text("unmasked (protected)")
    expect(admin.get_by_role("table", name="env events")).to_contain_text("env-secret-3")

    # What went over the wire: the agent got grants and sealed bundles; the server never got plaintext.
    to_agent = dashboard.to_agent()
    assert [r for r in to_agent if r["method"] == "POST" and r["url"].endswith("/v1/unlock")], to_agent
    for r in to_agent:
        if r["method"] == "POST":
            body = json.loads(r["body"])
            assert set(body) == {"grant", "bundle"}
    replay_key = json.loads(Path(keys.replay).read_text())
    secrets_ = [marker, "hunter2", "env-secret-3", "upstream-secret-1", "at-upstream-2",
                *(k["private"] for k in replay_key["recipients"])]  # fmt: skip
    to_server = dashboard.to_server()
    assert any(r["url"].endswith("/v1/grants") for r in to_server)
    for r in to_server + to_agent:
        wire = r["url"] + json.dumps(r["headers"]) + r["body"].decode("latin-1")
        for secret in secrets_:
            if r in to_agent and secret != secrets_[-1]:
                continue  # the agent may be sent sealed bundles; none of it is plaintext, and no key ever
            assert secret not in wire, f"{secret!r} was sent to {r['url']}"
    allowed = [e for e in dashboard.agent.audit() if e.get("result") == "allowed" and e["action"] == "unlock"]
    assert any(e.get("protected") for e in allowed) and any(not e.get("protected") for e in allowed)


def test_replay_readiness_and_replay_via_agent(dashboard: Dashboard, seeded: Seeded, keys: Any, shot: Shot) -> None:
    page = dashboard.page
    dashboard.sign_in()
    page.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['charge']}")
    checklist = page.get_by_role("list", name="Replay readiness checklist")
    for check in ("recorded", "signature", "kinds", "truncated", "key", "agent"):
        expect(checklist.locator(f"[data-check={check}]")).to_have_attribute("data-ok", "true")
    expect(checklist).to_contain_text("The agent holds key rcp_")
    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page.get_by_test_id("replay-outcome")).to_have_text("reproduced", timeout=60_000)
    expect(page.get_by_test_id("replay-isolation")).to_contain_text("network namespace")
    result = page.get_by_test_id("replay-result")
    expect(result).to_contain_text("The failure still happens on the code your agent runs.")
    expect(result).to_contain_text("builtins:KeyError: 'rates'")
    expect(result).to_contain_text(re.compile(r"(\d+) of \1 recorded calls served\s+\(1 host"))
    shot(page, "replay")
    assert any(e["action"] == "replay" and e.get("replay") == "reproduced" for e in dashboard.agent.audit())

    # The agent runs code where `convert` is fixed, and where `refund` makes a call its recording never saw.
    page.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['convert']}")
    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page.get_by_test_id("replay-outcome")).to_have_text("fixed", timeout=60_000)
    expect(page.get_by_test_id("replay-result")).to_contain_text("The failure no longer happens")
    page.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['refund']}")
    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page.get_by_test_id("replay-outcome")).to_have_text("divergence", timeout=60_000)
    expect(page.get_by_test_id("replay-result")).to_contain_text("email.send has no recorded answer")
    expect(page.get_by_test_id("replay-result")).to_contain_text("it changed since the capture")
    shot(page, "replay-divergence")
    grants = [r for r in dashboard.to_server() if r["url"].endswith("/v1/grants")]
    assert json.loads(grants[-1]["body"])["action"] == "replay"
    private = [k["private"] for k in json.loads(Path(keys.replay).read_text())["recipients"]]
    for r in dashboard.requests:  # the replay key stays in the agent: it is in no request, to anyone
        wire = r["url"] + json.dumps(r["headers"]) + r["body"].decode("latin-1")
        assert not any(p in wire for p in private), r["url"]


def test_create_regression_test_shows_a_pull_command_that_works(
    dashboard: Dashboard, seeded: Seeded, shot: Shot, tmp_path: Path
) -> None:
    page = dashboard.page
    dashboard.sign_in()
    page.goto(f"{dashboard.server.url}/#/issues/{seeded.issues['checkout']}")
    expect(page.get_by_test_id("guard-status")).to_contain_text("Guarded")
    expect(page.get_by_test_id("issue-status")).to_have_text("guarded")
    history = page.get_by_role("table", name="Regression runs")
    expect(history).to_contain_text("fixed")
    expect(history).to_contain_text("run=412")

    page.get_by_role("button", name="Create regression test").click()
    command = page.get_by_test_id("pull-command").inner_text()
    code = page.get_by_test_id("test-code").inner_text()
    newest = seeded.runs["checkout0"]  # 15 minutes old; checkout1 is 90
    assert command == (
        f"FLUXRUN_API_KEY=fra_… fluxrun pull {newest} --server {dashboard.server.url} --to tests/fluxrun"
    )
    assert "@fluxrun.replay(BUNDLE" in code and "def test_post_checkout_valueerror" in code
    shot(page, "regression")

    # The command does what the page says, and the test code names the file it writes.
    args = command.split("fluxrun pull ", 1)[1].split()
    result = subprocess.run(
        [sys.executable, "-m", "fluxrun.cli.app", "pull", *args],
        env={**os.environ, "FLUXRUN_API_KEY": dashboard.server.tokens["api"]},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [written] = (tmp_path / "tests" / "fluxrun").glob("*.fluxrun")
    assert f'BUNDLE = "tests/fluxrun/{written.name}"' in code

    page.get_by_role("button", name="Reopen").click()
    expect(page.get_by_test_id("issue-status")).to_have_text("open")
    assert dashboard.server.api(f"/v1/issues/{seeded.issues['checkout']}").json()["status"] == "open"
    # Back to guarded as the other tests expect it (no dashboard action sets guarded: CI's report does).
    restored = httpx.patch(
        f"{dashboard.server.url}/v1/issues/{seeded.issues['checkout']}",
        json={"status": "guarded"},
        headers={"authorization": f"Bearer {dashboard.server.tokens['api']}"},
        timeout=10,
    )
    assert restored.status_code == 200, restored.text


def test_agent_down_and_expired_grant(dashboard: Dashboard, seeded: Seeded, shot: Shot) -> None:
    page = dashboard.page
    nowhere = f"http://127.0.0.1:{free_port()}"
    dashboard.sign_in(agent_url=nowhere)
    expect(page.get_by_role("button", name="Agent: unreachable")).to_be_visible()
    page.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['login1']}")
    checklist = page.get_by_role("list", name="Replay readiness checklist")
    expect(checklist.locator("[data-check=agent]")).to_have_attribute("data-ok", "false")
    expect(page.get_by_role("button", name="Replay", exact=True)).to_be_disabled()
    page.get_by_role("button", name="Unlock", exact=True).click()
    error = page.get_by_test_id("unlock-error")
    expect(error).to_have_attribute("data-down", "true")
    expect(error).to_contain_text(f"The agent at {nowhere} cannot be reached")
    shot(page, "agent-down")

    # Expired grant: the server issues a 1 s grant and the upload to the agent takes longer.
    page.evaluate(f"localStorage.setItem('fluxrun.agentUrl', {json.dumps(dashboard.agent.url)})")
    page.reload()
    expect(page.get_by_role("button", name="Agent: connected")).to_be_visible()

    def short_grant(route: Any) -> None:
        body = json.loads(route.request.post_data)
        route.continue_(post_data=json.dumps({**body, "ttl_seconds": 1}))

    def slow_agent(route: Any) -> None:
        time.sleep(2.5)
        route.continue_()

    page.route("**/v1/grants", short_grant)
    page.route(f"{dashboard.agent.url}/v1/unlock", slow_agent)
    page.get_by_role("button", name="Unlock", exact=True).click()
    expect(error).to_have_attribute("data-expired", "true", timeout=20_000)
    expect(error).to_contain_text("The grant expired")
    shot(page, "expired-grant")
    page.unroute("**/v1/grants")
    page.unroute(f"{dashboard.agent.url}/v1/unlock")
    page.get_by_role("button", name="Request a new grant").click()
    expect(page.get_by_test_id("unlock-state")).to_contain_text("masked")
    assert any(e.get("reason") == "expired" for e in dashboard.agent.audit())


def test_server_down_then_back(dashboard: Dashboard, seeded: Seeded, shot: Shot) -> None:
    page = dashboard.page
    dashboard.sign_in()
    dashboard.server.stop()
    try:
        page.get_by_role("link", name="Runs").click()
        expect(page.get_by_role("alert").filter(has_text="cannot be reached").first).to_be_visible()
        shot(page, "server-down")
    finally:
        dashboard.server.start()
    page.get_by_role("button", name="Try again").click()
    expect(page.get_by_role("table", name="Runs").locator("tbody tr")).to_have_count(len(seeded.runs))
    assert httpx.get(dashboard.server.url + "/healthz", timeout=5).status_code == 200


def test_a_run_that_made_unrecorded_io_says_it_is_not_replay_ready(dashboard: Dashboard, seeded: Seeded) -> None:
    page = dashboard.page
    dashboard.sign_in()
    reason = "1 connection to 127.0.0.1:5432 was not recorded"

    def not_ready(route: Any) -> None:  # what the server answers for a run whose capture noted unrecorded IO
        response = route.fetch()
        body = response.json()
        body["summary"].update(replay_ready=False, not_replay_ready=[reason])
        route.fulfill(response=response, body=json.dumps(body), content_type="application/json")

    page.route(re.compile(rf".*/v1/runs/{seeded.runs['charge']}$"), not_ready)
    page.goto(f"{dashboard.server.url}/#/runs/{seeded.runs['charge']}")
    check = page.get_by_role("list", name="Replay readiness checklist").locator("[data-check=recorded]")
    expect(check).to_have_attribute("data-ok", "false")
    expect(check).to_have_text(f"Not replay-ready: {reason}")
