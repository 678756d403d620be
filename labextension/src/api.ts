/**
 * The one client of the session API (docs/session-api.md): every route the
 * panels call, typed as the contract states it. Routes are relative to the
 * Jupyter server's base URL, under `fedhub/api/`.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

// ---------------------------------------------------------------- types

/** GET fedhub/api/session */
export interface ISessionInfo {
  mode: 'hub' | 'standalone';
  user: string | null;
  site: string | null;
  node: string | null;
  gpu_type: string | null;
  /** how many GPUs this session holds */
  gpus: number | null;
  cuda_visible_devices: string | null;
  session_type: string | null;
  hub_url: string | null;
  tracking_uri: string | null;
  mlflow_ui_url: string | null;
}

export interface IResource {
  capacity: number;
  used: number;
  free: number;
}

export interface IGpuResource extends IResource {
  type: string;
  max_free_on_a_node: number;
}

/** One entry of the hub's /api/sites (docs/api.md). */
export interface ISite {
  name: string;
  kind: string;
  up: boolean;
  down_reason: string;
  sessions: number;
  max_sessions: number | null;
  nodes: number;
  cpus: IResource;
  memory: IResource;
  gpus: IGpuResource[];
}

/** GET fedhub/api/sites */
export interface ISites {
  sites: ISite[];
  /** Unix time (seconds) of the inventory's last change, or null */
  updated: number | null;
}

export interface IExperiment {
  experiment_id: string;
  name: string;
  lifecycle_stage: string;
  last_update_time: number | null;
}

/** GET fedhub/api/experiments */
export interface IExperimentsPage {
  experiments: IExperiment[];
  next_page_token: string | null;
}

/** The contract's `Run`. */
export interface IRun {
  run_id: string;
  run_name: string | null;
  experiment_id: string;
  status: string;
  /** milliseconds since the epoch */
  start_time: number | null;
  end_time: number | null;
  metrics: { [key: string]: number };
  params: { [key: string]: string };
  tags: { [key: string]: string };
  /** the run carries fedhub's capture */
  reproducible: boolean;
}

/** GET fedhub/api/experiments/{id}/runs */
export interface IRunsPage {
  runs: IRun[];
  next_page_token: string | null;
  metric_keys: string[];
  param_keys: string[];
}

export interface IMetricPoint {
  step: number;
  timestamp: number;
  value: number;
}

/** GET fedhub/api/runs/{id}/metrics/{key} */
export interface IMetricHistory {
  key: string;
  history: IMetricPoint[];
}

/** GET fedhub/api/compare */
export interface IComparison {
  runs: IRun[];
  metric_keys: string[];
  param_keys: string[];
}

/** POST fedhub/api/runs/{id}/reproduce (202) */
export interface IReproductionStarted {
  id: string;
  status: 'running';
}

export interface IMetricComparison {
  metric: string;
  original: number | null;
  reproduced: number | null;
  match: boolean;
}

/** GET fedhub/api/reproductions/{id} */
export interface IReproduction {
  id: string;
  run_id: string;
  status: 'running' | 'done' | 'failed';
  child_run_id: string | null;
  identical: boolean | null;
  comparison: IMetricComparison[];
  message: string | null;
  log_tail: string | null;
}

export interface IRunsQuery {
  max_results?: number;
  page_token?: string | null;
  order_by?: string | null;
  filter?: string | null;
}

/** The page size the panels ask for. */
export const PAGE_SIZE = 50;

/** The most runs GET compare takes. */
export const MAX_COMPARE = 20;

// ---------------------------------------------------------------- errors

/** A failed call: `message` is the server's JSON `message` when it sent one. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

// ---------------------------------------------------------------- transport

type Query = { [key: string]: string | number | null | undefined };

let settings: ServerConnection.ISettings | null = null;

function serverSettings(): ServerConnection.ISettings {
  if (!settings) {
    settings = ServerConnection.makeSettings();
  }
  return settings;
}

/** Use these settings instead of the page's (tests, other front ends). */
export function setServerSettings(s: ServerConnection.ISettings): void {
  settings = s;
  sessionPromise = null;
}

/** The URL of a route: each path part is one encoded segment. */
export function apiUrl(parts: string[], query?: Query): string {
  const base = URLExt.join(
    serverSettings().baseUrl,
    'fedhub/api',
    ...parts.map(encodeURIComponent)
  );
  if (!query) {
    return base;
  }
  const q: { [key: string]: string } = {};
  for (const [k, v] of Object.entries(query)) {
    if (v !== null && v !== undefined && v !== '') {
      q[k] = String(v);
    }
  }
  return Object.keys(q).length ? base + URLExt.objectToQueryString(q) : base;
}

/** A JSON call to a session-API route; errors carry the server's message and status. */
export async function call<T>(
  method: string,
  parts: string[],
  query?: Query,
  body?: unknown
): Promise<T> {
  const url = apiUrl(parts, query);
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, serverSettings());
  } catch (err) {
    throw new ApiError(
      `Cannot reach the server: ${(err as Error).message ?? err}`,
      0
    );
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message =
      data && typeof data.message === 'string' && data.message
        ? data.message
        : `${response.status} ${response.statusText || 'error'}`;
    throw new ApiError(message, response.status);
  }
  if (data === null) {
    throw new ApiError(`Not JSON from ${url}`, response.status);
  }
  return data as T;
}

/** The message of any error, for the panels. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err ?? 'unknown error');
}

function request<T>(parts: string[], query?: Query): Promise<T> {
  return call<T>('GET', parts, query);
}

// ---------------------------------------------------------------- routes

let sessionPromise: Promise<ISessionInfo> | null = null;

/** GET session; cached, as it does not change during a session (a failure is not cached). */
export function getSession(refresh = false): Promise<ISessionInfo> {
  if (!sessionPromise || refresh) {
    sessionPromise = request<ISessionInfo>(['session']);
    sessionPromise.catch(() => {
      sessionPromise = null;
    });
  }
  return sessionPromise;
}

export function getSites(): Promise<ISites> {
  return request<ISites>(['sites']);
}

export function getExperiments(
  pageToken?: string | null,
  maxResults = 1000
): Promise<IExperimentsPage> {
  return request<IExperimentsPage>(['experiments'], {
    max_results: maxResults,
    page_token: pageToken
  });
}

/** Every experiment, following next_page_token (at most `maxPages` pages). */
export async function getAllExperiments(maxPages = 10): Promise<IExperiment[]> {
  const all: IExperiment[] = [];
  let token: string | null = null;
  for (let i = 0; i < maxPages; i++) {
    const page: IExperimentsPage = await getExperiments(token);
    all.push(...page.experiments);
    token = page.next_page_token;
    if (!token) {
      break;
    }
  }
  return all;
}

export function getRuns(
  experimentId: string,
  query: IRunsQuery = {}
): Promise<IRunsPage> {
  return request<IRunsPage>(['experiments', experimentId, 'runs'], {
    max_results: query.max_results ?? PAGE_SIZE,
    page_token: query.page_token,
    order_by: query.order_by,
    filter: query.filter
  });
}

export function getRun(runId: string): Promise<IRun> {
  return request<IRun>(['runs', runId]);
}

export function getMetricHistory(
  runId: string,
  key: string
): Promise<IMetricHistory> {
  return request<IMetricHistory>(['runs', runId, 'metrics', key]);
}

export function compareRuns(runIds: string[]): Promise<IComparison> {
  return request<IComparison>(['compare'], { run_ids: runIds.join(',') });
}

export function startReproduction(
  runId: string
): Promise<IReproductionStarted> {
  return call<IReproductionStarted>('POST', ['runs', runId, 'reproduce'], undefined, {});
}

export function getReproduction(id: string): Promise<IReproduction> {
  return request<IReproduction>(['reproductions', id]);
}

/** A hub group an experiment is shared with, and what its members may do. */
export interface IShare {
  group: string;
  permission: SharePermission;
}

export type SharePermission = 'READ' | 'USE' | 'EDIT' | 'MANAGE';
export const SHARE_PERMISSIONS: SharePermission[] = ['READ', 'USE', 'EDIT', 'MANAGE'];

export interface IShares {
  experiment_id: string;
  experiment_name: string;
  shares: IShare[];
}

export function getShares(experimentId: string): Promise<IShares> {
  return request<IShares>(['experiments', experimentId, 'shares']);
}

/** Share with a hub group (only the experiment's owner, MANAGE, may). */
export function shareExperiment(
  experimentId: string,
  group: string,
  permission: SharePermission
): Promise<IShare> {
  return call<IShare>('POST', ['experiments', experimentId, 'shares'], undefined, {
    group,
    permission
  });
}

export function unshareExperiment(
  experimentId: string,
  group: string
): Promise<IShare> {
  return call<IShare>('DELETE', ['experiments', experimentId, 'shares', group]);
}

// ---------------------------------------------------------------- helpers

/**
 * An MLflow `order_by` term for a column: `metrics.acc DESC`. Keys that are
 * not plain identifiers are back-quoted, as MLflow's search syntax wants.
 */
export function orderByTerm(
  kind: 'attributes' | 'metrics' | 'params',
  key: string,
  descending: boolean
): string {
  const k = /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? key : '`' + key + '`';
  return `${kind}.${k} ${descending ? 'DESC' : 'ASC'}`;
}
