#!/usr/bin/env bash
# Transparency job: a real library's own test suite gives identical per-test results with every test
# function wrapped in `fluxrun.capture` (tests/transparency/fluxrun_wrap.py) and without it.
#
#   scripts/transparency.sh [--suite starlette|httpx2] PATH/TO/suite [extra pytest args]
#
# Two suites are known, told apart by PATH's layout unless --suite says which:
# - starlette: a Starlette checkout (it drives anyio portals, threads and context variables through TestClient).
#   Its virtualenv, ~/.cache/fluxrun-transparency/venv, holds that checkout and the anyio, trio and pytest its
#   uv.lock pins.
# - httpx2: a tree holding httpx2's tests/ (tests/httpx2 and tests/httpcore2) and its pytest settings (README,
#   "Transparency check", says how it was put together). Its virtualenv, ~/.cache/fluxrun-transparency/httpx2-venv,
#   holds httpx2 and httpcore2 from PyPI at $TRANSPARENCY_HTTPX2 (default 2.17.0) with the test dependencies of
#   httpx2's dev group.
# Either virtualenv also holds FluxRun from this checkout and is made once. Exit status 0 only when both runs list
# the same outcome for every test. Results land in ~/.cache/fluxrun-transparency/results (httpx2: results-httpx2).
set -euo pipefail

usage="usage: scripts/transparency.sh [--suite starlette|httpx2] PATH/TO/suite [pytest args]"
kind=""
if [ "${1:-}" = "--suite" ]; then
    kind="${2:?$usage}"
    shift 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
suite="$(cd "${1:?$usage}" && pwd)"
shift
if [ -z "$kind" ]; then
    if [ -d "$suite/tests/httpx2" ]; then kind=httpx2; else kind=starlette; fi
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/fluxrun-transparency"
case "$kind" in
starlette)
    venv="${TRANSPARENCY_VENV:-$cache/venv}"
    out="${TRANSPARENCY_OUT:-$cache/results}"
    addopts=""
    ;;
httpx2)
    venv="${TRANSPARENCY_VENV:-$cache/httpx2-venv}"
    out="${TRANSPARENCY_OUT:-$cache/results-httpx2}"
    addopts="--import-mode=importlib"  # the suite's own; its test folders share module names
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
mkdir -p "$out"

if [ ! -x "$venv/bin/python" ]; then
    if [ "$kind" = starlette ]; then
        # the suite's own pins (its uv.lock) for the libraries its tests lean on, so it passes as upstream's CI does
        pins="$(python3 - "$suite/uv.lock" <<'PY'
import re, sys
try:
    text = open(sys.argv[1]).read()
except OSError:
    text = ""
for name in ("anyio", "trio", "pytest"):
    found = re.search(r'^name = "%s"\nversion = "([^"]+)"' % name, text, re.M)
    print(f"{name}=={found.group(1)}" if found else name)
PY
)"
        python3 -m venv "$venv"
        # shellcheck disable=SC2086
        "$venv/bin/pip" install -q -e "$here" -e "$suite[full]" $pins
    else
        # httpx2's dev dependency group, less linting, packaging and pins its 2.17 extras outgrew (trio>=0.34)
        version="${TRANSPARENCY_HTTPX2:-2.17.0}"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q -e "$here" "httpx2[brotli,cli,http2,socks,ws,zstd]==$version" \
            "httpcore2[asyncio,trio,http2,socks]==$version" "chardet==6.0.0.post1" cryptography "flaky>=3.8" \
            "pytest>=9.1.0" pytest-codspeed "pytest-httpbin==2.1.0" "pytest-trio==0.8.0" "starlette>=0.49" \
            "trio>=0.34" "trustme==1.2.1" "uvicorn>=0.52.0" "websockets>=16.1.1" "werkzeug>=3.1.6"
    fi
fi

run() {  # run NAME [pytest args]: per-test outcomes into $out/NAME.txt
    local name="$1"; shift
    (cd "$suite" && PYTHONPATH="$here/tests/transparency" "$venv/bin/python" -m pytest tests -q -p no:cacheprovider \
        -o addopts="$addopts" -rA --junitxml="$out/$name.xml" "$@" >"$out/$name.log" 2>&1) || true
    "$venv/bin/python" - "$out/$name.xml" >"$out/$name.txt" <<'PY'
import sys
import xml.etree.ElementTree as ET

for case in ET.parse(sys.argv[1]).iter("testcase"):
    outcome = "passed"
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            outcome = child.tag
    print(f"{case.get('classname')}::{case.get('name')} {outcome}")
PY
    echo "$name: $(wc -l <"$out/$name.txt") tests, $(grep -c ' passed$' "$out/$name.txt" || true) passed," \
        "$(grep -c -E ' (failure|error)$' "$out/$name.txt" || true) failed or errored" \
        "($(grep -E ' in [0-9.]+s' "$out/$name.log" | tail -n 1 | sed -E 's/^=+ | =+$//g'))"
}

echo "transparency: $kind suite in $suite"
run plain "$@"
run captured -p fluxrun_wrap "$@"
if diff -u "$out/plain.txt" "$out/captured.txt" >"$out/diff.txt"; then
    echo "transparency: identical per-test outcomes with and without fluxrun.capture (0 differences)"
else
    echo "transparency: $(grep -c '^[-+][^-+]' "$out/diff.txt") differing lines; see $out/diff.txt"
    head -40 "$out/diff.txt"
    exit 1
fi
