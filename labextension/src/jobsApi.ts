/**
 * The Federated panel's client of the session API: Flower apps in the workspace,
 * the federation's sites, federated jobs (the session forwards them to the hub).
 */
// one transport for every panel: the same server settings, errors and JSON handling
export { call, errorMessage } from './api';
import { call } from './api';

// ---------------------------------------------------------------- types

/** GET fedhub/api/fl/apps: one Flower app folder. */
export interface IFlowerApp {
  /** relative to the server root ('.' for the root itself) */
  path: string;
  abs_path: string;
  name?: string;
  version?: string;
  publisher?: string;
  serverapp?: string;
  clientapp?: string;
  config?: { [key: string]: string | number | boolean };
  /** set when its pyproject.toml does not parse */
  error?: string;
}

export interface IFlowerApps {
  root: string;
  apps: IFlowerApp[];
}

/** One site as federated jobs see it (the hub's /api/federation/sites). */
export interface IFederationSite {
  name: string;
  kind: string;
  allowed: boolean;
  reason: string;
  datasets?: string[];
}

export interface ISiteStatus {
  state: string;
  detail?: string;
  kind?: string;
}

/** One round's figures: `round` plus metric values (train_*, eval_*, bytes...). */
export interface IRoundMetrics {
  round: number;
  [key: string]: unknown;
}

/** A federated job (the hub's record). */
export interface IJob {
  id: string;
  owner?: string;
  app: string;
  app_display?: string;
  sites: string[];
  rounds: number;
  rounds_done?: number;
  strategy: string;
  /** e.g. {codec: 'int8'} or {codec: 'topk', ratio: 0.1}; null for none */
  compression: { [key: string]: unknown } | string | null;
  state: string;
  created?: number;
  started?: number | null;
  finished?: number | null;
  site_status: { [site: string]: ISiteStatus };
  round_metrics: IRoundMetrics[];
  bytes?: { [key: string]: unknown };
  mlflow_run_id?: string;
  error?: string;
  log_tail?: string;
  warnings?: string[];
  name?: string;
}

export interface IJobEvent {
  seq?: number;
  type?: string;
  [key: string]: unknown;
}

export interface IJobEvents {
  events: IJobEvent[];
  /** the cursor for the next call's `after` */
  last?: number;
  next?: number;
  state?: string;
}

export interface ILaunchRequest {
  app: string;
  sites: string[];
  rounds: number;
  strategy: string;
  compression: string;
}

export const FINAL_STATES = ['succeeded', 'failed', 'cancelled'];

// ---------------------------------------------------------------- routes

export function getFlowerApps(): Promise<IFlowerApps> {
  return call<IFlowerApps>('GET', ['fl', 'apps']);
}

/** The hub may answer a list or {sites: [...]}. */
export async function getFederationSites(): Promise<IFederationSite[]> {
  const data = await call<any>('GET', ['fl', 'sites']);
  const sites = Array.isArray(data) ? data : data.sites ?? data.items ?? [];
  return sites as IFederationSite[];
}

export async function listJobs(): Promise<IJob[]> {
  const data = await call<any>('GET', ['jobs']);
  const jobs = Array.isArray(data) ? data : data.jobs ?? data.items ?? [];
  return jobs as IJob[];
}

export function launchJob(request: ILaunchRequest): Promise<IJob> {
  return call<IJob>('POST', ['jobs'], undefined, request);
}

export function getJob(id: string): Promise<IJob> {
  return call<IJob>('GET', ['jobs', id]);
}

export function cancelJob(id: string): Promise<IJob> {
  return call<IJob>('POST', ['jobs', id, 'cancel'], undefined, {});
}

/** Long poll: events after `after`, waiting up to `wait` seconds for one. */
export function jobEvents(id: string, after: number, wait: number): Promise<IJobEvents> {
  return call<IJobEvents>('GET', ['jobs', id, 'events'], { after, wait });
}
