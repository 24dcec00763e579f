#!/usr/bin/env bash
# Transparency job: a real library's own test suite gives identical per-test results with every test
# function wrapped in `fluxrun.capture` (tests/transparency/fluxrun_wrap.py) and without it.
#
#   scripts/transparency.sh PATH/TO/starlette-checkout [extra pytest args]
#
# The suite is Starlette's (it drives anyio portals, threads and context variables through TestClient).
# A virtualenv with FluxRun (this checkout), that Starlette checkout and its test dependencies is made once
# in ~/.cache/fluxrun-transparency/venv. Exit status 0 only when both runs list the same outcome for every test.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
suite="$(cd "${1:?usage: scripts/transparency.sh PATH/TO/starlette-checkout [pytest args]}" && pwd)"
shift
cache="${XDG_CACHE_HOME:-$HOME/.cache}/fluxrun-transparency"
venv="${TRANSPARENCY_VENV:-$cache/venv}"
out="${TRANSPARENCY_OUT:-$cache/results}"
mkdir -p "$out"

if [ ! -x "$venv/bin/python" ]; then
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
fi

run() {  # run NAME [pytest args]: per-test outcomes into $out/NAME.txt
    local name="$1"; shift
    (cd "$suite" && PYTHONPATH="$here/tests/transparency" "$venv/bin/python" -m pytest tests -q -p no:cacheprovider \
        -o addopts="" -rA --junitxml="$out/$name.xml" "$@" >"$out/$name.log" 2>&1) || true
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
    echo "$name: $(wc -l <"$out/$name.txt") tests, $(grep -c ' passed$' "$out/$name.txt" || true) passed"
}

run plain "$@"
run captured -p fluxrun_wrap "$@"
if diff -u "$out/plain.txt" "$out/captured.txt" >"$out/diff.txt"; then
    echo "transparency: identical per-test outcomes with and without fluxrun.capture (0 differences)"
else
    echo "transparency: $(grep -c '^[-+][^-+]' "$out/diff.txt") differing lines; see $out/diff.txt"
    head -40 "$out/diff.txt"
    exit 1
fi
