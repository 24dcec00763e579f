// The regression workflow's text: the exact `fluxrun pull` command and the test it leads to. The file
// name follows `fluxrun pull` (src/fluxrun/cli/pull.py) and the test follows `fluxrun export-test`.

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

export function bundleFile(run: Pick<Run, "route" | "fingerprint" | "bundle_id">, folder = "tests/fluxrun"): string {
  const fingerprint = (run.fingerprint || "none").slice(0, 8);
  return `${folder}/${slug(run.route || "", "-", 40, "run")}-${fingerprint}-${run.bundle_id.slice(0, 8)}.fluxrun`;
}

export function pullCommand(serverUrl: string, run: Pick<Run, "bundle_id">, folder = "tests/fluxrun"): string {
  return `FLUXRUN_API_KEY=fra_… fluxrun pull ${run.bundle_id} --server ${serverUrl} --to ${folder}`;
}

export function pullIssueCommand(serverUrl: string, issueId: number, folder = "tests/fluxrun"): string {
  return `FLUXRUN_API_KEY=fra_… fluxrun pull issue:${issueId} --server ${serverUrl} --to ${folder}`;
}

export function testCode(run: Run): string {
  const route = `${run.method ?? ""} ${run.route ?? ""}`.trim();
  const errorType = run.error_type || run.outcome || "failure";
  const name = slug(`${route} ${errorType.split(":").pop()} ${(run.fingerprint || "").slice(0, 8)}`, "_", 60, "bundle");
  const recorded = run.error_type ? `${run.error_type}: ${run.error_message ?? ""}` : `HTTP ${run.status}`;
  const file = bundleFile(run);
  const web = run.method !== null;
  return `"""Regression test for ${route || run.route}: ${recorded.replace(/"""/g, "'''")}.

Captured ${run.started_at} (bundle ${run.bundle_id}). Run with FLUXRUN_REPLAY_KEY=path/to/replay.key;
replay serves every recorded call from the bundle and blocks the network, so this test is deterministic.
"""

import fluxrun

BUNDLE = "${file}"


@fluxrun.replay(BUNDLE, expect="reproduce")  # the bug, before its fix: change to expect="fixed" once fixed
def test_${name}(fluxrun_replay):
    # recorded: ${recorded.replace(/\n/g, " ").slice(0, 100)}
    assert fluxrun_replay.outcome == "reproduced"
${web ? "" : ""}
@fluxrun.replay(BUNDLE)  # the guard: passes once the failure is fixed
def test_${name}_fixed(fluxrun_replay):
    assert fluxrun_replay.outcome == "fixed"
${web ? '    assert fluxrun_replay.response is not None and fluxrun_replay.response["status"] < 500\n' : ""}`;
}

export const ciCommand = "FLUXRUN_DSN=… FLUXRUN_REPLAY_KEY=path/to/replay.key pytest --fluxrun-bundles tests/fluxrun";
