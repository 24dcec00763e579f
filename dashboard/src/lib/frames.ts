// A recorded traceback, ordered the way a triager reads it: the app's own frames first (innermost, where
// it raised, on top), library frames folded below, and FluxRun's own frames (its middleware and capture
// wrappers) never shown: they are how the run was recorded, not part of what failed.

export interface Frame {
  file: string;
  line: number;
  function: string;
  module?: string;
  in_app?: boolean;
  code?: string;
}

export interface Culprit {
  file: string;
  line: number;
  function: string;
  module?: string;
}

const FLUXRUN_MODULE = /^(fluxrun|pytest_fluxrun|fluxrun_server)(\.|$)/;
const FLUXRUN_FILE = /[\\/](fluxrun|pytest_fluxrun|fluxrun_server)[\\/]/;

export function isFluxRun(frame: Frame): boolean {
  return FLUXRUN_MODULE.test(frame.module ?? "") || (!frame.in_app && FLUXRUN_FILE.test(frame.file ?? ""));
}

export function orderFrames(frames: Frame[] | null | undefined): { app: Frame[]; library: Frame[]; hidden: number } {
  const list = Array.isArray(frames) ? frames.filter((f) => f && typeof f === "object") : [];
  const shown = list.filter((f) => !isFluxRun(f)).reverse(); // innermost first
  return {
    app: shown.filter((f) => f.in_app),
    library: shown.filter((f) => !f.in_app),
    hidden: list.length - shown.length,
  };
}

/** "shop/app.py:30 in login": where the app raised. */
export function where(frame: Pick<Frame, "file" | "line" | "function"> | null | undefined): string {
  if (!frame) return "—";
  return `${frame.file}:${frame.line} in ${frame.function}`;
}

/** The culprit of a run: from its plaintext summary (no unlock needed), else from unlocked frames. */
export function culpritOf(summary: Record<string, any> | null | undefined, frames?: Frame[] | null): Culprit | null {
  const fromSummary = summary?.error?.culprit;
  if (fromSummary && typeof fromSummary.file === "string") return fromSummary as Culprit;
  const { app, library } = orderFrames(frames);
  return app[0] ?? library[0] ?? null;
}
