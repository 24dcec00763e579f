// Hash routing: every page's state (filters, sort, cursor, tab) lives in the URL, so a link can be shared
// and the server only has to serve `/`. "#/issues?status=open&sort=count" -> { path: "/issues", query }.

export interface Route {
  path: string;
  query: Record<string, string>;
}

function parse(hash: string): Route {
  const raw = hash.replace(/^#/, "") || "/issues";
  const [path, search = ""] = raw.split("?", 2);
  return { path: path || "/issues", query: Object.fromEntries(new URLSearchParams(search)) };
}

export const route: Route = $state(parse(location.hash));

window.addEventListener("hashchange", () => {
  const next = parse(location.hash);
  route.path = next.path;
  route.query = next.query;
});

export function href(path: string, query: Record<string, string | number | null | undefined> = {}): string {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== null && v !== undefined && v !== "") search.set(k, String(v));
  const s = search.toString();
  return `#${path}${s ? `?${s}` : ""}`;
}

export function navigate(path: string, query: Record<string, string | number | null | undefined> = {}, replace = false): void {
  const target = href(path, query);
  if (replace) {
    history.replaceState(null, "", target);
    const next = parse(target);
    route.path = next.path;
    route.query = next.query;
  } else {
    location.hash = target;
  }
}
