"""The CI job for replay isolation: the replay tests run inside `unshare -rn` (a user and network namespace
of their own, with no interface up), and the kernel's counters for that namespace show that not one packet
was sent or even attempted, from the tests or from anything they replay."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
COUNTERS = "cat /proc/net/snmp /proc/net/snmp6 /proc/net/dev"
# Replay tests that capture against real local servers first (PostgreSQL, redis-server, an HTTP upstream): they
# need a loopback interface, which the namespace does not have; their replays run isolated in the main suite.
NEED_SERVERS = (
    "tests/unit/replay/test_replay_db.py",
    "tests/unit/replay/test_replay_db_psycopg2.py",
    "tests/unit/replay/test_replay_http_clients.py",
    "tests/unit/replay/test_replay_redis_cluster.py",
    "tests/unit/replay/test_replay_redis_smtp.py",
)


def attempts(dump: str) -> dict[str, int]:
    """Outgoing IPv4/IPv6 packets sent or refused for want of a route, and loopback packets sent."""
    seen: dict[str, int] = {}
    lines = dump.splitlines()
    for names, values in itertools.pairwise(lines):
        if names.startswith("Ip: Forwarding") and values.startswith("Ip: "):
            row = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
            seen["Ip OutRequests"], seen["Ip OutNoRoutes"] = row["OutRequests"], row["OutNoRoutes"]
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("Ip6OutRequests", "Ip6OutNoRoutes"):
            seen[parts[0]] = int(parts[1])
        if line.strip().startswith("lo:"):
            seen["lo tx packets"] = int(line.split(":", 1)[1].split()[9])
    return seen


def test_the_replay_tests_send_nothing_from_inside_a_network_namespace() -> None:
    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is needed for this job (apt-get install -y util-linux)"
    marker = "=== pytest done ==="
    script = (
        f"{COUNTERS}; echo '{marker}'; "
        f"{sys.executable} -m pytest tests/unit/replay {' '.join('--ignore=' + p for p in NEED_SERVERS)} "
        "-q -p no:cacheprovider -W ignore::DeprecationWarning "
        f"> /dev/stderr 2>&1; echo \"exit $?\"; echo '{marker}'; {COUNTERS}"
    )
    done = subprocess.run([unshare, "-rn", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"unshare -rn failed: {done.stderr[-2000:]}"
    before, status, after = done.stdout.split(marker)
    assert status.strip() == "exit 0", f"the replay tests failed inside the namespace:\n{done.stderr[-4000:]}"
    counted_before, counted_after = attempts(before), attempts(after)
    assert counted_after.keys() >= {"Ip OutRequests", "Ip OutNoRoutes", "lo tx packets"}, after
    assert counted_after == counted_before, f"packets left or were attempted: {counted_before} -> {counted_after}"
