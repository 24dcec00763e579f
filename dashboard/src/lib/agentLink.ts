// The agent's URL from a sign-in link (`/?agent=http%3A%2F%2F127.0.0.1%3A8765`, which `fluxrun demo --serve`
// prints). The dashboard will post grants and sealed bundles to whatever URL this is, so a link never
// switches it silently for someone signed in (they confirm), and only a plain http(s) origin is taken.

export const AGENT_PARAM = "agent";
const MAX_URL = 512;

/** `raw` as an agent URL (scheme, host, port, path without a trailing slash), or an error in words. */
export function parseAgentUrl(raw: string): { url: string } | { error: string } {
  const text = raw.trim();
  if (!text) return { error: "Enter the agent's URL, e.g. http://127.0.0.1:8401" };
  if (text.length > MAX_URL) return { error: `An agent URL is at most ${MAX_URL} characters.` };
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return { error: `${text} is not a URL (it needs http:// or https:// and a host).` };
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return { error: "An agent URL starts with http:// or https://." };
  if (url.username || url.password) return { error: "An agent URL carries no user name or password." };
  if (url.search || url.hash) return { error: "An agent URL has no query or fragment." };
  return { url: `${url.origin}${url.pathname}`.replace(/\/+$/, "") };
}

/** Take `?agent=` off the address (so a reload or a shared link does not carry it) and return it, checked. */
export function takeLinkedAgent(): { url: string } | { error: string } | null {
  const params = new URLSearchParams(location.search);
  const raw = params.get(AGENT_PARAM);
  if (raw === null) return null;
  params.delete(AGENT_PARAM);
  const rest = params.toString();
  history.replaceState(history.state, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
  return parseAgentUrl(raw);
}
