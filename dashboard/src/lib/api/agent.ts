// The customer's agent: the only place that holds the replay key. The browser posts it a server grant and
// the sealed bundle, and gets the plaintext (or a replay outcome) straight back; the server never sees it.

import { bundleBase64 } from "../bundle";
import type { AgentHealth, ReplayResult, Unlocked } from "./types";

const URL_KEY = "fluxrun.agentUrl";
export const DEFAULT_AGENT_URL = "http://127.0.0.1:8401";

export class AgentError extends Error {
  constructor(
    message: string,
    readonly status: number, // 0: the agent could not be reached
    readonly reason: string,
  ) {
    super(message);
  }
  get down(): boolean {
    return this.status === 0;
  }
  get expired(): boolean {
    return this.reason === "expired";
  }
}

export function agentUrl(): string {
  return localStorage.getItem(URL_KEY) || DEFAULT_AGENT_URL;
}

export function setAgentUrl(url: string): void {
  localStorage.setItem(URL_KEY, url.trim().replace(/\/+$/, ""));
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const base = agentUrl();
  let response: Response;
  try {
    response = await fetch(base + path, {
      method,
      headers: body !== undefined ? { "content-type": "application/json" } : {},
      body: body !== undefined ? JSON.stringify(body) : undefined,
      cache: "no-store",
      credentials: "omit",
    });
  } catch {
    throw new AgentError(
      `The agent at ${base} cannot be reached: is \`fluxrun agent\` running, and does its FLUXRUN_AGENT_ORIGIN allow ${location.origin}?`,
      0,
      "unreachable",
    );
  }
  const doc = await response.json().catch(() => ({}));
  if (!response.ok) {
    const reason = typeof doc.reason === "string" ? doc.reason : "error";
    const detail = typeof doc.detail === "string" ? doc.detail : response.statusText;
    throw new AgentError(`${response.status} ${reason}: ${detail}`, response.status, reason);
  }
  return doc as T;
}

export const agent = {
  health: () => call<AgentHealth>("GET", "/v1/health"),
  unlock: (grant: string, bundle: Uint8Array) => call<Unlocked>("POST", "/v1/unlock", { grant, bundle: bundleBase64(bundle) }),
  replay: (grant: string, bundle: Uint8Array) =>
    call<ReplayResult>("POST", "/v1/replay", { grant, bundle: bundleBase64(bundle) }),
};
