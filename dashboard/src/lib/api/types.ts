// Shapes of the server's query API (see /openapi.json) and of the agent's answers.

export type IssueStatus = "open" | "resolved" | "regressed" | "guarded" | "ignored";

export interface Project {
  id: number;
  name: string;
  created_at: string;
}

export interface Issue {
  id: number;
  project_id: number;
  fingerprint: string;
  error_type: string | null;
  message: string | null;
  route: string | null;
  count: number;
  first_seen: string;
  last_seen: string;
  status: IssueStatus;
}

export interface RegressionRun {
  bundle_id: string;
  outcome: "fixed" | "reproduced" | "changed";
  ci: Record<string, unknown>;
  created_at: string;
}

export interface IssueDetail extends Issue {
  series: { hour: string; count: number }[];
  regression_runs: RegressionRun[];
}

export interface Triage extends Issue {
  /** Set while the issue is ignored: it reopens when its count reaches `until_count`. */
  snooze: { until_count: number; remaining: number; events: number } | null;
  history: { action: string; actor: string; detail: Record<string, unknown>; created_at: string }[];
}

export interface Run {
  bundle_id: string;
  project_id: number;
  issue_id: number | null;
  started_at: string;
  received_at: string;
  route: string | null;
  method: string | null;
  status: number | null;
  outcome: string | null;
  error_type: string | null;
  error_message: string | null;
  fingerprint: string | null;
  duration_ms: number | null;
  release: string | null;
  environment: string | null;
  request_id: string | null;
  trace_id: string | null;
  event_count: number;
}

export interface IndexEvent {
  seq: number;
  kind: string;
  label: string;
  task: string;
  start_ms: number;
  dur_ms: number;
  status?: number;
  truncated?: boolean;
  error_type?: string;
}

export interface RunDetail extends Run {
  signing_key_id: string | null;
  summary: Record<string, any>;
  events: IndexEvent[];
  network: { seq: number; label: string; status: number | null; error_type: string | null; start_ms: number; dur_ms: number }[];
}

export interface AgentHealth {
  agent: string;
  version: string;
  project: string;
  grant_key_id: string;
  recipient_key_ids: string[];
  signing_key_ids: string[];
  origin: string | null;
}

/** What the agent answers to an unlock: the payload, masked unless the grant was protected. */
export interface Unlocked {
  bundle_id: string;
  protected: boolean;
  masked: boolean;
  header: Record<string, unknown>;
  summary: Record<string, any>;
  payload: Record<string, any>;
}

export interface ReplayResult {
  bundle_id: string;
  outcome?: "reproduced" | "fixed" | "changed";
  original?: Record<string, any>;
  new?: Record<string, any>;
  served?: Record<string, number>;
  recorded_calls?: number;
  unconsumed?: unknown[];
  warnings?: unknown[];
  isolation?: string;
  error?: { type: string; message: string; call?: string; site?: string; kind?: string };
}
