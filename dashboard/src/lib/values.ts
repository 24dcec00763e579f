// Recorded values as a person reads them. The SDK encodes what JSON cannot hold as tagged objects
// (`{"$t": "uuid", "v": "…"}`, src/fluxrun/model/values.py); this turns them back into text, from the
// encoding alone, like `describe` there: a uuid reads as the uuid, a datetime as its ISO text.

const TAG = "$t";
const MAX_ITEMS = 50;

function bytesText(b64: string): string {
  try {
    const raw = atob(b64);
    const hex = [...raw.slice(0, 32)].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(" ");
    return `${raw.length} bytes: ${hex}${raw.length > 32 ? " …" : ""}`;
  } catch {
    return `bytes (${b64.length} base64 characters)`;
  }
}

function list(items: unknown[], depth: number): string {
  const shown = items.slice(0, MAX_ITEMS).map((v) => readable(v, depth + 1));
  return shown.join(", ") + (items.length > MAX_ITEMS ? `, … ${items.length - MAX_ITEMS} more` : "");
}

export function readable(value: unknown, depth = 0): string {
  if (depth > 8) return "…";
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return depth === 0 ? value : JSON.stringify(value);
  if (Array.isArray(value)) return `[${list(value, depth)}]`;
  if (typeof value !== "object") return String(value);
  const data = value as Record<string, any>;
  const tag = data[TAG];
  if (tag === undefined) {
    return `{${Object.entries(data).slice(0, MAX_ITEMS).map(([k, v]) => `${JSON.stringify(k)}: ${readable(v, depth + 1)}`).join(", ")}}`;
  }
  const v = data.v;
  const kind = typeof data.type === "string" ? data.type.split(":").pop() : tag;
  switch (tag) {
    case "uuid":
    case "decimal":
    case "int":
    case "float":
    case "datetime":
    case "date":
    case "time":
      return String(v);
    case "str":
      return (depth === 0 ? String(v) : JSON.stringify(v)) + (data.truncated ? ` … (${data.size} characters)` : "");
    case "timedelta":
      return Array.isArray(v) ? `${v[0] ? `${v[0]} days, ` : ""}${v[1] + v[2] / 1e6} s` : String(v);
    case "bytes":
      return bytesText(String(v));
    case "tuple":
      return Array.isArray(v) ? `(${list(v, depth)}${v.length === 1 ? "," : ""})` : String(v);
    case "set":
    case "frozenset":
      return Array.isArray(v) ? `{${list(v, depth)}}` : String(v);
    case "dict":
      return Array.isArray(v) ? `{${v.slice(0, MAX_ITEMS).map((kv: unknown[]) => `${readable(kv[0], depth + 1)}: ${readable(kv[1], depth + 1)}`).join(", ")}}` : String(v);
    case "exception":
      return `${kind}: ${data.message ?? ""}`;
    case "enum":
    case "model":
      return `${kind} ${readable(v, depth + 1)}`;
    case "object":
      return `${kind} ${readable(data.base ?? data.state ?? {}, depth + 1)}`;
    case "repr":
      return `${kind} ${v ?? ""}`;
    default:
      return `${kind} ${readable(v, depth + 1)}`;
  }
}

/** A random call's recorded result: the value, or the permutation `random.shuffle` recorded. */
export function randomValue(data: Record<string, any> | null | undefined): string {
  if (!data) return "—";
  if ("permutation" in data) return `shuffled to order ${readable(data.permutation)}`;
  return readable(data.value);
}
