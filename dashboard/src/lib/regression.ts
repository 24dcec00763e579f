// The regression workflow's text: the exact `fluxrun pull` command and the test it leads to. The file
// name follows `fluxrun pull` (src/fluxrun/cli/pull.py) and the test follows `fluxrun export-test`.
//
// Runs are written by whoever holds a registered signing key, and the developer pastes this text into a
// shell and a test file. So every value from a run is quoted for POSIX sh (`shQuote`), is a Python string
// literal (`pyString`) or is escaped text inside the docstring and comments (`pyText`), and test names
// are reduced to [a-z0-9_]: nothing a run says can become a command or a statement.

import type { Run } from "./api/types";

function slug(text: string, sep: string, max: number, fallback: string): string {
  return (
    text
      .replace(/[^0-9a-zA-Z]+/g, sep)
      .replace(new RegExp(`^\\${sep}+|\\${sep}+$`, "g"), "")
      .toLowerCase()
      .slice(0, max) || fallback
  );
}

/** One shell word, as Python's shlex.quote writes it: bare when only safe characters, else single-quoted. */
export function shQuote(value: string): string {
  if (value === "") return "''";
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(value)) return value;
  return `'${value.replace(/'/g, `'"'"'`)}'`;
}

/** Text that stays text inside a Python string, docstring or comment: ASCII only, no quote, backslash or
 * line break left raw. Inside a string or docstring the escapes read back as the original text. */
export function pyText(value: string): string {
  let out = "";
  for (const ch of value) {
    const code = ch.codePointAt(0) ?? 0;
    if (ch === "\\") out += "\\\\";
    else if (ch === '"') out += '\\"';
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code >= 0x20 && code < 0x7f) out += ch;
    else if (code <= 0xff) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else if (code <= 0xffff) out += `\\u${code.toString(16).padStart(4, "0")}`;
    else out += `\\U${code.toString(16).padStart(8, "0")}`;
  }
  return out;
}

/** A Python string literal whose value is exactly `value`. */
export function pyString(value: string): string {
  return `"${pyText(value)}"`;
}

export function bundleFile(run: Pick<Run, "route" | "fingerprint" | "bundle_id">, folder = "tests/fluxrun"): string {
  const fingerprint = slug((run.fingerprint || "none").slice(0, 8), "-", 40, "run");
  const id = slug(run.bundle_id.slice(0, 8), "-", 40, "run");
  return `${folder}/${slug(run.route || "", "-", 40, "run")}-${fingerprint}-${id}.fluxrun`;
}

function pull(ref: string, serverUrl: string, folder: string): string {
  return `FLUXRUN_API_KEY=fra_… fluxrun pull ${shQuote(ref)} --server ${shQuote(serverUrl)} --to ${shQuote(folder)}`;
}

export function pullCommand(serverUrl: string, run: Pick<Run, "bundle_id">, folder = "tests/fluxrun"): string {
  return pull(run.bundle_id, serverUrl, folder);
}

export function pullIssueCommand(serverUrl: string, issueId: number, folder = "tests/fluxrun"): string {
  return pull(`issue:${issueId}`, serverUrl, folder);
}

/** Which test fits an issue: while the failure still happens (open, ignored) a test that expects it to
 * reproduce; once it is fixed (resolved, guarded) or was fixed and came back (regressed), the guard that
 * expects it fixed. One test, so pasting it into the app as it is now gives a passing test, except for a
 * regression, where the failing guard is the point. */
export type TestKind = "reproduce" | "fixed";

export function testKindFor(status: string): TestKind {
  return status === "open" || status === "ignored" ? "reproduce" : "fixed";
}

export function testCode(run: Run, kind: TestKind = "fixed"): string {
  const route = `${run.method ?? ""} ${run.route ?? ""}`.trim();
  const errorType = run.error_type || run.outcome || "failure";
  const name = slug(`${route} ${errorType.split(":").pop()} ${(run.fingerprint || "").slice(0, 8)}`, "_", 60, "bundle");
  const recorded = run.error_type ? `${run.error_type}: ${run.error_message ?? ""}` : `HTTP ${run.status}`;
  const file = bundleFile(run);
  const web = run.method !== null;
  const head = `"""Regression test for ${pyText(`${route || run.route}: ${recorded}`)}.

Captured ${pyText(run.started_at)} (bundle ${pyText(run.bundle_id)}). Run with FLUXRUN_REPLAY_KEY=path/to/replay.key;
replay serves every recorded call from the bundle and blocks the network, so this test is deterministic.
"""

import fluxrun

BUNDLE = ${pyString(file)}

`;
  if (kind === "reproduce") {
    return `${head}
@fluxrun.replay(BUNDLE, expect="reproduce")  # passes while the bug is there; once fixed, change to expect="fixed"
def test_${name}_reproduces(fluxrun_replay):
    # recorded: ${pyText(recorded.replace(/\n/g, " ").slice(0, 100))}
    assert fluxrun_replay.outcome == "reproduced"
`;
  }
  return `${head}
@fluxrun.replay(BUNDLE)  # the guard: passes while the failure stays fixed
def test_${name}_stays_fixed(fluxrun_replay):
    # recorded: ${pyText(recorded.replace(/\n/g, " ").slice(0, 100))}
    assert fluxrun_replay.outcome == "fixed"
${web ? '    assert fluxrun_replay.response is not None and fluxrun_replay.response["status"] < 500\n' : ""}`;
}

/** What each line of the shown test means, for the page to say beside it. */
export function testMeaning(kind: TestKind, web: boolean): [string, string][] {
  const lines: [string, string][] = [
    ["BUNDLE", "the recorded run, as `fluxrun pull` writes it (still encrypted; the replay key opens it)"],
  ];
  if (kind === "reproduce") {
    lines.push(
      [
        '@fluxrun.replay(BUNDLE, expect="reproduce")',
        "replays the recorded request against your code, every outside call answered from the recording and the network blocked; the test passes only if the code still fails the same way (same exception type and fingerprint)",
      ],
      ['assert fluxrun_replay.outcome == "reproduced"', "says it in the test: the bug is still there"],
    );
  } else {
    lines.push(
      [
        "@fluxrun.replay(BUNDLE)",
        'replays the recorded request against your code (expect="fixed", the default); the test fails if the code fails the way it did, or if it makes a call the recording cannot answer',
      ],
      ['assert fluxrun_replay.outcome == "fixed"', "the replay ended without the recorded failure"],
    );
    if (web) lines.push(['response["status"] < 500', "and the app answered the replayed request without a server error"]);
  }
  lines.push(["fluxrun_replay", "the fixture holding the replay's result: outcome (reproduced, fixed or changed) and response"]);
  return lines;
}

export const ciCommand = "FLUXRUN_DSN=… FLUXRUN_REPLAY_KEY=path/to/replay.key pytest --fluxrun-bundles tests/fluxrun";
