"""Blindness: the server never sees a secret the app had, on either backend.

A real app (tests/integration/apps/blind_app.py under uvicorn) fails with canaries planted in its exception text,
outbound URLs and paths (Slack/Telegram/Discord webhooks, `?key=`, `?code=`, `?sig=`), env, log lines, request
ids, incoming paths and headers, and ships the failures to a real `fluxrun server`. Then every byte the server
holds is searched for every canary: the WAL, the segments (files, or S3 objects), the index (the SQLite file and
a logical dump of its tables; for PostgreSQL a dump of every table), every other file, the log and every API answer.

The search is proven able to see: the scrubbed summaries' own text (the route templates, `[Filtered]`) is found
in each of those places, so a canary would have been found the same way.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fixtures import Server
from server_process import wait_until
from servers import uvicorn_process

from fluxrun.scrub import MASK

pytestmark = pytest.mark.slow

CASES = ["password", "api_key", "email", "iban", "aws", "slack", "telegram", "env", "maps"]
ALNUM = string.ascii_letters + string.digits


def _random(alphabet: str, size: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(size))


def _iban_de() -> tuple[str, str]:
    """A checksum-valid German IBAN with a random account, compact and printed in groups of four."""
    bban = _random(string.digits, 18)
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
    iban = f"DE{check:02d}{bban}"
    return iban, " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def make_canaries() -> tuple[dict[str, str], dict[str, str]]:
    """(what the app uses, what must never be found): each needle is unique to this run."""
    places = ("password", "api_key", "email", "aws", "slack", "telegram", "discord", "env", "key", "code", "sig")
    core = {name: secrets.token_hex(6) for name in (*places, "rid", "bearer", "path", "guard")}
    iban, iban_printed = _iban_de()
    telegram = f"{_random(string.digits, 10)}:AA{core['telegram']}{_random(ALNUM, 21)}"
    path_token = f"{_random(string.digits, 9)}:AA{core['path']}{_random(ALNUM, 21)}"
    aws_secret = f"wJ{core['aws']}/K7MDENG/{_random(ALNUM, 17)}"
    app = {
        "password": f"Pw{core['password']}",
        "api_key": f"Ak{core['api_key']}",
        "email": f"jane.{core['email']}@example.com",
        "iban": iban,
        "iban_printed": iban_printed,
        "aws_key_id": "AKIA" + _random(string.ascii_uppercase + string.digits, 16),
        "aws_secret": aws_secret,
        "slack_url": f"https://hooks.slack.com/services/T0{_random(string.ascii_uppercase, 7)}/"
        f"B0{_random(string.ascii_uppercase, 7)}/{core['slack']}{_random(ALNUM, 12)}",
        "telegram_url": f"https://api.telegram.org/bot{telegram}/sendMessage",
        "discord_url": f"https://discord.com/api/webhooks/{_random(string.digits, 18)}/"
        f"{core['discord']}{_random(ALNUM, 56)}",
        "maps_url": f"https://maps.googleapis.com/maps/api/geocode/json?address=Main+St&key=Kq{core['key']}"
        f"&code=4%2F0A{core['code']}",
        "storage_url": f"https://acct.blob.core.windows.net/c/b.txt?sv=2022-11-02&sp=r&sig=S{core['sig']}%3D",
        "env_password": f"Ev{core['env']}",
        "request_id": f"rid.{core['rid']}@client.example",
        "bearer": f"Hb{core['bearer']}",
        "path_token": path_token,
        "guard_email": f"mx.{core['guard']}@example.org",
    }
    needles = {f"core {name}": value for name, value in core.items()}
    needles.update(
        iban=iban,
        iban_printed=iban_printed,
        iban_account=iban[4:],
        aws_key_id=app["aws_key_id"],
        aws_secret=aws_secret,
        telegram_token=telegram,
        path_token=path_token,
    )
    return app, needles


# --- what the server holds ----------------------------------------------------------------------------------


def _sqlite_dump(path: Path) -> bytes:
    """Every row of every table, as text: FTS and page layouts can split or compress what a raw grep sees."""
    out: list[str] = []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        for table in tables:
            try:
                rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            except sqlite3.DatabaseError:
                continue  # an FTS shadow table that cannot be read on its own
            out.extend(f"{table}: {row!r}" for row in rows)
    finally:
        conn.close()
    return "\n".join(out).encode()


def _postgres_dump(url: str) -> bytes:
    import psycopg

    out: list[str] = []
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=10) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            for row in conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall():
                out.append(f"{table}: " + " | ".join(_text(value) for value in row))
    return "\n".join(out).encode()


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _object_store(server: Server) -> dict[str, bytes]:
    if server.backend != "postgres-s3":
        return {}  # the filesystem store is under the data dir
    import boto3

    bucket = server.env["FLUXRUN_SERVER_OBJECT_STORE_URL"].removeprefix("s3://").split("/", 1)[0]
    s3 = boto3.client(
        "s3",
        endpoint_url=server.env["FLUXRUN_SERVER_S3_ENDPOINT_URL"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[f"s3://{bucket}/{item['Key']}"] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def _files(root: Path) -> dict[str, bytes]:
    found = {}
    for path in sorted(root.rglob("*")):
        try:
            found[str(path.relative_to(root))] = path.read_bytes()
        except (IsADirectoryError, FileNotFoundError):  # a folder, or a WAL file retired while we looked
            continue
    return found


def server_holdings(server: Server) -> dict[str, dict[str, bytes]]:
    """Where to search, by kind: the WAL, the segments (files or S3 objects), the index (its files and a logical
    dump of every table), every other file in the data dir, and the server's log."""
    files = _files(server.data_dir)
    wal = {name: data for name, data in files.items() if name.startswith("wal/")}
    segments = {name: data for name, data in files.items() if name.endswith(".seg")} | _object_store(server)
    if server.backend == "postgres-s3":
        dump = {"postgres dump": _postgres_dump(server.env["FLUXRUN_SERVER_DATABASE_URL"])}
    else:
        databases = [name for name, data in files.items() if data.startswith(b"SQLite format 3")]
        dump = {f"{name} (dump)": _sqlite_dump(server.data_dir / name) for name in databases}
    other = {name: data for name, data in files.items() if name not in wal and name not in segments}
    log = {"server output": server.output().encode()}
    return {"wal": wal, "segments": segments, "index": dump, "data dir": other, "log": log}


def api_answers(server: Server, needles: dict[str, str]) -> dict[str, bytes]:
    """Every GET the query API offers, for every run and issue, plus a text search for every canary."""
    headers = {"authorization": f"Bearer {server.tokens['api']}"}
    answers: dict[str, bytes] = {}

    def get(path: str, **params: Any) -> httpx.Response:
        response = httpx.get(server.url + path, params=params or None, headers=headers, timeout=30)
        answers[f"{path} {params or ''}"] = response.content
        return response

    get("/healthz")
    get("/v1/usage")
    (project,) = [p for p in get("/v1/projects").json()["projects"] if p["name"] == "shop"]
    runs = get(f"/v1/projects/{project['id']}/runs", limit=500).json()["runs"]
    issues = get(f"/v1/projects/{project['id']}/issues").json()["issues"]
    get(f"/v1/projects/{project['id']}/issues/series")
    for run in runs:
        get(f"/v1/runs/{run['bundle_id']}")
        get(f"/v1/runs/{run['bundle_id']}/bundle")  # the sealed bundle: its summary is plaintext
    for issue in issues:
        get(f"/v1/issues/{issue['id']}")
    for needle in needles.values():  # a hit would carry the canary in its answer, which is searched below
        get(f"/v1/projects/{project['id']}/runs", q=needle)
    return answers


# --- the test -----------------------------------------------------------------------------------------------


@pytest.fixture
def shipped(server: Server, keys: Any, tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The blind app's failures, shipped to `server` and indexed: yields (canaries the app used, needles)."""
    app_canaries, needles = make_canaries()
    host = server.url.removeprefix("http://")
    env = {
        "FLUXRUN_DSN": f"http://{server.tokens['ingest']}@{host}/acme/shop",
        "FLUXRUN_CAPTURE_KEY": str(keys.capture),
        "FLUXRUN_DIR": str(tmp_path / "app"),
        "BLIND_CANARIES": json.dumps(app_canaries),
        "SHOP_DB_PASSWORD": app_canaries["env_password"],
    }
    with uvicorn_process("blind_app:app", env) as app, httpx.Client(base_url=app, timeout=30) as client:
        before = len(_runs(server))
        request_headers = {
            "x-request-id": app_canaries["request_id"],
            "authorization": f"Bearer {app_canaries['bearer']}",
            "cookie": f"session={app_canaries['bearer']}",
            "connection": "close",  # uvicorn closes the connection after an app's exception
        }
        paths = [f"/fail/{case}?token={app_canaries['bearer']}" for case in CASES]
        paths += [f"/hook/bot{app_canaries['path_token']}", f"/guarded/{app_canaries['guard_email']}"]
        for path in paths:
            assert client.get(path, headers=request_headers).status_code == 500, path
        expected = before + len(paths)
        arrived = wait_until(lambda: len(_runs(server)) >= expected, 90)
        stats = client.get("/fluxrun/stats").json()
        assert arrived, f"{len(_runs(server))} of {expected} runs arrived; the app's FluxRun: {stats}"
        yield app_canaries, needles


def _runs(server: Server) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {server.tokens['api']}"}
    projects = httpx.get(server.url + "/v1/projects", headers=headers, timeout=10).json()["projects"]
    (project,) = [p for p in projects if p["name"] == "shop"]
    url = f"{server.url}/v1/projects/{project['id']}/runs"
    return list(httpx.get(url, params={"limit": 500}, headers=headers, timeout=10).json()["runs"])


def test_the_server_never_sees_a_planted_secret(server: Server, shipped: tuple[dict[str, str], dict[str, str]]) -> None:
    _app_canaries, needles = shipped
    answers = api_answers(server, needles)
    holdings = server_holdings(server)
    holdings["api"] = answers

    # the search can see: the summaries' plaintext (route templates, masks) is in each place searched
    for kind in ("wal", "segments", "index", "api"):
        where = b"".join(holdings[kind].values())
        for proof in (b"/fail/{case}", b"/hook/{token}", MASK.encode()):
            assert proof in where, f"{proof!r} not in the {kind} ({sorted(holdings[kind])}): the search sees nothing"

    leaks = [
        f"{what} in {kind} {where}"
        for kind, places in holdings.items()
        for where, data in places.items()
        for what, needle in needles.items()
        if needle.encode() in data
    ]
    assert not leaks, "\n".join(leaks)
