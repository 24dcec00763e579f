"""The HTTP edge holds against one hostile sender, on both backends (issue 16: amplifiers, small ones, poison).

Each test is one finding: bodies bounded before they are parsed or authenticated, decompression bounded by
its output (memory measured on the server process), gzip members all decoded, slow senders cut off while
others are served, GraphQL depth/alias/token limits, refused work charged to the sender's rate, summaries the
index cannot store refused at ingest, and 4xx (not 500) for a NUL in the URL or an id out of range.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import zstandard
from server_fixtures import Server, _server_env
from server_process import wait_until
from servers import free_port

from fluxrun.bundle import Sealer, load_capture_key, read_bundle, signing_public_key
from fluxrun_server.ingest.batch import encode_batch

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
GiB = 1024 * MiB
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0


# -- helpers ------------------------------------------------------------------------------------------------


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def post_batch(server: Server, bundles: list[bytes], token: str | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/executions",
        content=encode_batch(bundles),
        headers=auth(token or server.tokens["ingest"]),
        timeout=30,
        **kwargs,
    )


def post_raw(server: Server, body: bytes, encoding: str) -> httpx.Response:
    headers = {**auth(server.tokens["ingest"]), "content-encoding": encoding}
    return httpx.post(f"{server.url}/v1/executions", content=body, headers=headers, timeout=60)


def visible(server: Server, bundle_id: str) -> bool:
    response = httpx.get(f"{server.url}/v1/runs/{bundle_id}", headers=auth(server.tokens["api"]), timeout=30)
    return response.status_code == 200


def project_id(server: Server) -> int:
    projects = httpx.get(f"{server.url}/v1/projects", headers=auth(server.tokens["api"]), timeout=30).json()
    return int(next(p["id"] for p in projects["projects"] if p["name"] == "shop"))


def connect(server: Server, timeout: float = 10.0) -> socket.socket:
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=timeout)


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 answer (read until Content-Length, or until the server closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), None
    )
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ")[1]), body


def request(server: Server, head: bytes, chunks: Iterable[bytes] = (), timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `head` then `chunks` until the server answers (it may answer before the body is all sent)."""
    with connect(server, timeout) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        return read_answer(sock)


def chunked(total: int, piece: bytes) -> Iterator[bytes]:
    """A chunked transfer encoding of `total` bytes made of `piece`, as raw chunks."""
    sent = 0
    while sent < total:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
        sent += len(piece)
    yield b"0\r\n\r\n"


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Peak:
    """The server process's resident memory: idle before, peak (VmHWM, reset at the start) after."""

    def __init__(self, server: Server) -> None:
        assert server.proc is not None
        self.pid = server.proc.pid

    def __enter__(self) -> Peak:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets the peak to the current RSS
        self.idle_kib = status_kib(self.pid, "VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_kib = status_kib(self.pid, "VmHWM")

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.idle_kib) / 1024


def provision(srv: Server, keys: Any) -> None:
    """As server_fixtures' `server`: acme/shop with the test keys, a token, API keys; other/app."""
    srv.admin("create-workspace", "acme")
    srv.admin("create-project", "acme", "shop")
    srv.admin("create-workspace", "other")
    srv.admin("create-project", "other", "app")
    key_id, public = signing_public_key(load_capture_key(keys.capture))
    srv.admin("add-key", "acme/shop", f"{key_id}:{public}")
    srv.tokens["ingest"] = srv.admin("create-token", "acme/shop")
    srv.tokens["other_ingest"] = srv.admin("create-token", "other/app")
    srv.tokens["api"] = srv.admin("create-api-key", "acme", "triager")
    srv.tokens["viewer"] = srv.admin("create-api-key", "acme", "watcher", "--role", "viewer")


@pytest.fixture(scope="module", params=["embedded", "postgres-s3"])
def strict_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: Any
) -> Iterator[Server]:
    """A server with short header and body deadlines and a low default rate (1 bundle per 5 s, burst 3)."""
    backend = request.param
    data_dir = tmp_path_factory.mktemp(f"strict-{backend}")
    port = free_port()
    env = {
        **_server_env(backend, data_dir, port, request),
        "FLUXRUN_SERVER_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "FLUXRUN_SERVER_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "FLUXRUN_CONTROL_DEFAULT_RATE_PER_SECOND": "0.2",
        "FLUXRUN_CONTROL_DEFAULT_BURST": "3",
    }
    srv = Server(f"http://127.0.0.1:{port}", env, data_dir, backend)
    provision(srv, keys)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@functools.cache
def zstd_bomb(size: int = GiB) -> bytes:
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = bytes(MiB)
    return b"".join(compressor.compress(zeros) for _ in range(size // MiB)) + compressor.flush()


@functools.cache
def gzip_bomb(size: int = GiB) -> bytes:
    compressor = gzip.zlib.compressobj(9, gzip.zlib.DEFLATED, 31)  # type: ignore[attr-defined]
    zeros = bytes(MiB)
    return b"".join(compressor.compress(zeros) for _ in range(size // MiB)) + compressor.flush()


# -- bodies are bounded before they are parsed or authenticated -----------------------------------------------

UNAUTHENTICATED_JSON_ROUTES = ["/v1/grants", "/v1/regression-runs", "/v1/graphql"]


@pytest.mark.parametrize("path", UNAUTHENTICATED_JSON_ROUTES)
def test_a_declared_oversized_body_is_refused_before_it_is_read(server, path):
    head = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 400000000\r\n\r\n"
    ).encode()
    started = time.monotonic()
    status, body = request(server, head, [b'{"results": ['], timeout=10)
    assert status == 413, body
    assert b"byte limit" in body and path.encode() in body
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("path", UNAUTHENTICATED_JSON_ROUTES)
def test_a_streamed_oversized_body_is_cut_at_the_limit_without_growing_the_server(server, path):
    head = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    ).encode()
    piece = b'{"bundle_id": "' + b"a" * (64 * 1024 - 32) + b'"},'
    with Peak(server) as peak:
        status, body = request(server, head, itertools.chain([b'5\r\n{"a":\r\n'], chunked(96 * MiB, piece)), timeout=60)
    # GraphQL checks the API key before it reads a body: a 401 there is as cheap as the 413 elsewhere
    assert status == 413 or (path == "/v1/graphql" and status == 401), body
    assert peak.growth_mib < 32, f"the server grew by {peak.growth_mib:.0f} MiB"


# -- decompression is bounded by its output -----------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_a_decompression_bomb_is_stopped_by_output_without_memory_or_stalls(server, seal, encoding):
    bomb = zstd_bomb() if encoding == "zstd" else gzip_bomb()
    answers: list[int] = []

    def bombard() -> None:
        for _ in range(3):
            answers.append(post_raw(server, bomb, encoding).status_code)

    ack_seconds: list[float] = []
    with Peak(server) as peak:
        bombers = [threading.Thread(target=bombard) for _ in range(4)]
        for thread in bombers:
            thread.start()
        while any(thread.is_alive() for thread in bombers):
            _, bundle = seal()
            started = time.monotonic()
            assert post_batch(server, [bundle]).status_code == 202
            ack_seconds.append(time.monotonic() - started)
        for thread in bombers:
            thread.join()
    assert answers == [413] * 12
    assert peak.growth_mib < 64, f"the server grew by {peak.growth_mib:.0f} MiB under {encoding} bombs"
    assert max(ack_seconds) < 1.5, f"another sender's ack waited {max(ack_seconds):.2f} s"


def test_every_gzip_member_is_decoded_within_the_limit(server, seal):
    first_id, first = seal()
    second_id, second = seal()
    body = gzip.compress(encode_batch([first])) + gzip.compress(encode_batch([second]))
    answer = post_raw(server, body, "gzip")
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == [first_id, second_id]
    # members that are each under the limit but together over it are refused like one big member
    big = gzip.compress(bytes(3 * MiB))
    assert post_raw(server, big + big, "gzip").status_code == 413
    assert post_raw(server, body + b"not gzip", "gzip").status_code == 400


# -- slow senders are cut off, others are served ---------------------------------------------------------------


def test_slow_headers_are_cut_off_while_other_requests_are_served(strict_server):
    server = strict_server
    idle = [connect(server) for _ in range(5)]  # open and send nothing
    trickling = [connect(server) for _ in range(5)]
    for sock in trickling:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
    started = time.monotonic()
    served: list[float] = []
    closed: set[socket.socket] = set()
    while time.monotonic() - started < HEADER_TIMEOUT_S + 3 and len(closed) < 10:
        for sock in trickling:
            if sock not in closed:
                try:
                    sock.sendall(b"x")  # one more byte of a header every 0.1 s: never complete
                except OSError:
                    closed.add(sock)
        t = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code in (200, 503)
        served.append(time.monotonic() - t)
        time.sleep(0.1)
        for sock in idle + trickling:
            if sock not in closed and select.select([sock], [], [], 0)[0]:
                answer = sock.recv(65536)
                assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
                closed.add(sock)
    elapsed = time.monotonic() - started
    assert len(closed) == 10, f"{len(closed)} of 10 slow connections closed in {elapsed:.1f} s"
    assert max(served) < 1.0
    for sock in idle + trickling:
        sock.close()


def test_oversized_headers_are_refused_with_431(strict_server):
    server = strict_server
    filler = "".join(f"x-filler-{n}: {'v' * 1000}\r\n" for n in range(100))  # 100 KiB of headers, sent at once
    status, body = request(server, f"GET /healthz HTTP/1.1\r\nhost: x\r\n{filler}\r\n".encode(), timeout=10)
    assert status == 431, body
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code in (200, 503)


@pytest.mark.parametrize("path", ["/v1/executions", "/v1/grants"])
def test_a_slow_body_is_cut_off_with_408(strict_server, path):
    server = strict_server
    head = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\n"
        f"authorization: Bearer {server.tokens['ingest'] if path == '/v1/executions' else server.tokens['api']}\r\n"
        "content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    ).encode()
    started = time.monotonic()

    def trickle() -> Iterator[bytes]:
        for _ in range(1000):
            time.sleep(0.2)
            yield b"0"

    status, body = request(server, head, trickle(), timeout=BODY_TIMEOUT_S + 5)
    assert status == 408, body
    assert b"did not arrive" in body
    assert time.monotonic() - started < BODY_TIMEOUT_S + 2


# -- refused work counts against the sender's rate --------------------------------------------------------------


def test_refused_batches_count_against_the_senders_rate(strict_server):
    server = strict_server
    token = server.tokens["other_ingest"]  # its own project, so other tests' acme/shop bucket is untouched
    for _ in range(3):  # the burst: three malformed batches
        answer = httpx.post(f"{server.url}/v1/executions", content=b"\x00\x00\x00\x09tiny", headers=auth(token))
        assert answer.status_code == 400, answer.text
    after = httpx.post(f"{server.url}/v1/executions", content=encode_batch([b"x"]), headers=auth(token))
    assert after.status_code == 429, after.text
    assert "rate_limited" in after.json()["detail"]


# -- GraphQL: depth, alias and token limits ---------------------------------------------------------------------


def graphql(server: Server, query: str, token: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = httpx.post(f"{server.url}/v1/graphql", json={"query": query}, headers=auth(token), timeout=60)
    return answer, time.monotonic() - started


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("{" + " ".join(f"a{n}: me {{ role }}" for n in range(10_000)) + "}", "tokens"),
        ("{" + " ".join(f"a{n}: me {{ role }}" for n in range(100)) + "}", "aliases"),
        ("query Q { ...A } fragment A on Query { projects { plan { ...B } } } fragment B on Plan { id }", None),
        (
            "{ __schema { types { fields { "
            " type { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } }",
            "introspection",
        ),
    ],
    ids=["10000-aliases", "100-aliases", "fragments", "introspection"],
)
def test_graphql_refuses_expensive_queries_fast(server, query, says):
    answer, seconds = graphql(server, query, server.tokens["viewer"])
    assert seconds < 2, f"{seconds:.1f} s"
    errors = answer.json().get("errors")
    if says is None:  # fragments are followed by the depth count, and a legitimate one passes
        assert errors is None, errors
    else:
        assert errors, answer.text[:300]
        assert says in errors[0]["message"].lower(), errors[0]["message"]
    ok, _ = graphql(server, "{ a: me { role } b: me { role } projects { plan { id } } }", server.tokens["viewer"])
    assert ok.status_code == 200 and "errors" not in ok.json(), ok.text


# -- summaries the index cannot store are refused at ingest --------------------------------------------------


@pytest.fixture(scope="module")
def reseal(keys: Any, seal: Any) -> Any:
    """`reseal(change)` -> (bundle_id, bytes): a test bundle whose summary `change(summary)` altered, re-signed."""
    sealer = Sealer(load_capture_key(keys.capture), sdk="tests", project="acme/shop")

    def make(change: Any) -> tuple[str, bytes]:
        bundle_id, bundle = seal()
        summary = dict(read_bundle(bundle).summary)
        change(summary)
        payload = {"format": 1, "bundle_id": bundle_id, "events": []}
        return bundle_id, sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id)

    return make


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


POISON = {
    "status-2**64-1": (lambda s: s.update(status=2**64 - 1), "status"),
    "status-2**40": (lambda s: s.update(status=2**40), "status"),
    "int-past-64-bits-in-an-event": (lambda s: s["events"][0].update(dur_ms=2**64 - 1), "64-bit"),
    "nul-in-route": (lambda s: s.update(route="/orders/\x00"), "nul"),
    "nul-in-a-key": (lambda s: s.update({"x\x00": 1}), "nul"),
    "20-kb-summary-bundle-id": (lambda s: s.update(bundle_id="b" * 20_000), "bundle id"),
    "100-k-message": (
        lambda s: s.update(error={"type": "builtins:ValueError", "message": "m" * 100_000}),
        "characters",
    ),
    "nested-64-deep": (lambda s: s.update(extra=_nested(64)), "deeper"),
    "negative-duration": (lambda s: s.update(duration_ms=-1), "duration_ms"),
}


@pytest.mark.parametrize("case", list(POISON))
def test_summary_values_the_index_cannot_store_are_refused_at_ingest(server, seal, reseal, case):
    change, says = POISON[case]
    bad_id, bad = reseal(change)
    good_id, good = seal()
    answer = post_batch(server, [bad, good])
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["accepted"] == [good_id]
    [rejected] = body["rejected"]
    assert (rejected["bundle_id"], rejected["reason"]) == (bad_id, "malformed")
    assert says in rejected["message"].lower(), rejected["message"]
    later_id, later = seal()
    assert post_batch(server, [later]).status_code == 202
    assert wait_until(lambda: visible(server, good_id) and visible(server, later_id))


def test_a_summary_at_the_limits_is_accepted(server, seal, reseal):
    bundle_id, bundle = reseal(
        lambda s: s.update(
            status=599, duration_ms=0, extra=_nested(30), big=2**63 - 1, small=-(2**63), note="n" * 60_000
        )
    )
    answer = post_batch(server, [bundle])
    assert answer.json()["accepted"] == [bundle_id], answer.text
    assert wait_until(lambda: visible(server, bundle_id))


# -- small ones: a NUL in the URL, ids out of range ------------------------------------------------------------


def test_a_nul_in_the_url_is_a_400(server):
    pid = project_id(server)
    for url in (f"/v1/projects/{pid}/runs?q=a%00b", f"/v1/projects/{pid}/runs?route=%00", "/v1/runs/a%00b"):
        answer = httpx.get(server.url + url, headers=auth(server.tokens["api"]), timeout=30)
        assert answer.status_code == 400, (url, answer.text)
        assert "NUL" in answer.json()["detail"]


@pytest.mark.parametrize("number", [2**31, 2**63, 2**64 + 1])
def test_ids_out_of_range_are_a_4xx(server, number):
    pid = project_id(server)
    headers = auth(server.tokens["api"])
    for method, url in (
        ("GET", f"/v1/projects/{number}/runs"),
        ("GET", f"/v1/projects/{number}/issues"),
        ("GET", f"/v1/projects/{number}/issues/series"),
        ("GET", f"/v1/issues/{number}"),
        ("GET", f"/v1/projects/{pid}/runs?issue_id={number}"),
    ):
        answer = httpx.request(method, server.url + url, headers=headers, timeout=30)
        assert answer.status_code in (404, 422), (url, answer.status_code, answer.text)
    patch = httpx.patch(f"{server.url}/v1/issues/{number}", json={"status": "resolved"}, headers=headers)
    assert patch.status_code in (404, 422), patch.text
    grant = httpx.post(
        f"{server.url}/v1/grants",
        json={"bundle_id": "a\x00b" + secrets.token_hex(2), "action": "unlock"},
        headers=headers,
    )
    assert grant.status_code == 422, grant.text
