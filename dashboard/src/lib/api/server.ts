// The FluxRun server's query API, called with the signed-in API key. The server only ever sees
// summaries, sealed (encrypted) bundles and grant requests: plaintext comes from the agent, never here.

import type { Issue, IssueDetail, IssueStatus, Project, Run, RunDetail, Triage } from "./types";

const KEY = "fluxrun.apiKey";

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number, // 0: the server could not be reached
  ) {
    super(message);
  }
  get serverDown(): boolean {
    return this.status === 0 || this.status === 502 || this.status === 503 || this.status === 504;
  }
  get signedOut(): boolean {
    return this.status === 401;
  }
}

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

async function request(method: string, path: string, body?: unknown, key = apiKey()): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers: {
        ...(key ? { authorization: `Bearer ${key}` } : {}),
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
      cache: "no-store",
    });
  } catch {
    throw new ApiError("The FluxRun server cannot be reached. Is it running?", 0);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const doc = await response.json();
      detail = typeof doc.detail === "string" ? doc.detail : JSON.stringify(doc.detail);
    } catch {
      /* not JSON: keep the status text */
    }
    if (response.status >= 502 && response.status <= 504 && !detail) detail = "the server is unavailable";
    throw new ApiError(`${response.status}: ${detail}`, response.status);
  }
  return response;
}

async function json<T>(method: string, path: string, body?: unknown, key?: string | null): Promise<T> {
  return (await request(method, path, body, key)).json() as Promise<T>;
}

function qs(params: Record<string, string | number | null | undefined>): string {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") search.set(k, String(v));
  const s = search.toString();
  return s ? `?${s}` : "";
}

export const server = {
  projects: (key?: string) => json<{ projects: Project[] }>("GET", "/v1/projects", undefined, key),
  issues: (project: number, params: { status?: string; sort?: string; limit?: number }) =>
    json<{ issues: Issue[] }>("GET", `/v1/projects/${project}/issues${qs(params)}`),
  issueSeries: (project: number, hours = 24) =>
    json<{ start: string; hours: number; series: Record<string, number[]> }>(
      "GET",
      `/v1/projects/${project}/issues/series${qs({ hours })}`,
    ),
  issue: (id: number) => json<IssueDetail>("GET", `/v1/issues/${id}`),
  setIssueStatus: (id: number, status: IssueStatus) => json<Issue>("PATCH", `/v1/issues/${id}`, { status }),
  /** Resolve, ignore (until `events` more events) and reopen: each written to the audit log. */
  triage: (id: number) => json<Triage>("GET", `/v1/issues/${id}/triage`),
  resolve: (id: number) => json<Triage>("POST", `/v1/issues/${id}/resolve`),
  ignore: (id: number, events: number) => json<Triage>("POST", `/v1/issues/${id}/ignore`, { events }),
  reopen: (id: number) => json<Triage>("POST", `/v1/issues/${id}/reopen`),
  runs: (project: number, params: Record<string, string | number | null | undefined>) =>
    json<{ runs: Run[]; next_cursor: string | null }>("GET", `/v1/projects/${project}/runs${qs(params)}`),
  run: (bundleId: string) => json<RunDetail>("GET", `/v1/runs/${encodeURIComponent(bundleId)}`),
  /** The sealed bundle: still encrypted; only the agent can open it. */
  bundle: async (bundleId: string) =>
    new Uint8Array(await (await request("GET", `/v1/runs/${encodeURIComponent(bundleId)}/bundle`)).arrayBuffer()),
  grant: (bundleId: string, action: "unlock" | "replay", protectedView: boolean) =>
    json<{ grant: string; expires_at: number; claims: Record<string, unknown> }>("POST", "/v1/grants", {
      bundle_id: bundleId,
      action,
      protected: protectedView,
    }),
};
