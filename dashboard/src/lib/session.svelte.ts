// Who is signed in, which projects they see, and whether the agent answers.

import { agent, agentUrl } from "./api/agent";
import { ApiError, apiKey, server, setApiKey } from "./api/server";
import type { AgentHealth, Project } from "./api/types";
import { navigate } from "./router.svelte";

export const session = $state({
  signedIn: apiKey() !== null,
  projects: [] as Project[],
  loaded: false,
  serverError: null as string | null,
  agent: null as AgentHealth | null,
  agentError: null as string | null,
  agentChecked: false,
});

export async function signIn(key: string): Promise<void> {
  const { projects } = await server.projects(key.trim());
  setApiKey(key.trim());
  session.projects = projects;
  session.loaded = true;
  session.signedIn = true;
  session.serverError = null;
}

export function signOut(message?: string): void {
  setApiKey(null);
  session.signedIn = false;
  session.projects = [];
  session.loaded = false;
  navigate("/signin", message ? { reason: message } : {});
}

export async function loadProjects(): Promise<void> {
  try {
    session.projects = (await server.projects()).projects;
    session.loaded = true;
    session.serverError = null;
  } catch (err) {
    handle(err);
  }
}

/** What every page does with a server error: 401 signs out; the rest is shown where it happened. */
export function handle(err: unknown): string {
  if (err instanceof ApiError && err.signedOut) {
    signOut("Your API key was refused; sign in again.");
  }
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof ApiError && err.serverDown) session.serverError = message;
  return message;
}

export async function checkAgent(): Promise<AgentHealth | null> {
  try {
    session.agent = await agent.health();
    session.agentError = null;
  } catch (err) {
    session.agent = null;
    session.agentError = err instanceof Error ? err.message : String(err);
  }
  session.agentChecked = true;
  return session.agent;
}

export function currentProject(query: Record<string, string>): number | null {
  const wanted = Number(query.project);
  if (wanted && session.projects.some((p) => p.id === wanted)) return wanted;
  return session.projects[0]?.id ?? null;
}

export { agentUrl };
