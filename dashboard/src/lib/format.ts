export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "—";
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.max(seconds, 0)}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86400)}d ago`;
}

export function when(iso: string | null | undefined): string {
  if (!iso) return "—";
  const date = new Date(iso);
  // A date the browser cannot read is shown as it came, instead of throwing and blanking the page.
  return Number.isNaN(date.getTime()) ? iso : date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function ms(value: number | null | undefined): string {
  if (value === null || value === undefined) return "—";
  return value < 10 ? `${value.toFixed(2)} ms` : `${Math.round(value)} ms`;
}

export function shortType(type: string | null | undefined): string {
  return type ? type.split(":").pop()! : "—";
}

export function pretty(value: unknown): string {
  if (value === undefined) return "";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

/** A recorded body ({text} or {base64}, maybe truncated) as display text. */
export function bodyText(body: any): string {
  if (!body) return "";
  if (typeof body.text === "string") {
    try {
      return JSON.stringify(JSON.parse(body.text), null, 2);
    } catch {
      return body.text;
    }
  }
  if (typeof body.base64 === "string") return `(binary, ${body.size ?? "?"} bytes, base64) ${body.base64}`;
  return "";
}

/** Recorded headers ([[name, value], ...]) as "name: value" lines. */
export function headerLines(headers: unknown): string {
  if (!Array.isArray(headers) || headers.length === 0) return "(no headers)";
  return headers.map((h) => (Array.isArray(h) ? `${h[0]}: ${h[1]}` : String(h))).join("\n");
}

/** One side of a replay's comparison: "HTTP 500, builtins:KeyError: 'rates'". */
export function outcomeLine(o: Record<string, any> | undefined): string {
  if (!o) return "—";
  const parts = [o.status ? `HTTP ${o.status}` : "", o.error_type ? `${o.error_type}: ${o.message ?? ""}` : ""];
  return parts.filter(Boolean).join(", ") || (o.kind === "ok" ? "returned normally" : String(o.kind ?? "—"));
}

/** The wall-clock time of an event: the run's start plus its offset, "14:03:07.125" (UTC). */
export function clockTime(startedAt: string | null | undefined, offsetMs: number): string {
  const start = startedAt ? Date.parse(startedAt) : NaN;
  if (Number.isNaN(start)) return "—";
  return new Date(start + offsetMs).toISOString().slice(11, 23);
}
