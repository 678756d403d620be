/**
 * The Deploy panel's client of the session API: the models a user can deploy, and
 * deployments (the session forwards them to the hub's fedhub API).
 */
import { call } from './jobsApi';

/** A run's logged model (MLflow 3 LoggedModel). */
export interface ILoggedModel {
  /** runs:/RUN_ID/NAME: what a deployment takes */
  uri: string;
  model_uri: string;
  model_id: string;
  name: string;
  run_id: string;
  run_name?: string;
  experiment: string;
  created: number | null;
  flavor: string;
  metrics: { [key: string]: number };
}

export interface IRegisteredModel {
  /** models:/NAME/VERSION */
  uri: string;
  name: string;
  version: string;
  run_id: string;
}

export interface IOnnxFile {
  path: string;
  abs_path: string;
  size: number;
}

/** GET fedhub/api/deploy/models */
export interface IModelChoices {
  logged_models: ILoggedModel[];
  registered_models: IRegisteredModel[];
  onnx_files: IOnnxFile[];
}

export interface IStep {
  name: string;
  status: 'pending' | 'running' | 'done' | 'failed' | string;
  message?: string;
  started?: number;
  finished?: number;
}

export interface IVersion {
  version: number;
  model: string;
  status: string;
  error: string | null;
  created?: number;
}

export interface IEndpoint {
  model_name?: string;
  model_version?: string;
  http?: string;
  grpc?: string;
  http_via_hub?: string;
  site?: string;
  group?: string;
  manifests?: string;
}

/** A deployment (the hub's record). */
export interface IDeployment {
  id: string;
  name: string;
  target: string;
  kind: string;
  status: string;
  model_name: string;
  current_version: number | null;
  pending_version?: number | null;
  versions: IVersion[];
  steps: IStep[];
  endpoint: IEndpoint;
  error: string | null;
  created: number;
  updated: number;
}

export interface IDeployEvent {
  seq: number;
  time: number;
  step: string;
  status: string;
  message: string;
  version: number | null;
}

export interface IDeployEvents {
  id: string;
  status: string;
  events: IDeployEvent[];
  last: number;
}

export interface ISnippet {
  model_name: string;
  model_version?: string;
  target: string;
  http: string;
  grpc: string;
  http_via_hub: string;
  note: string;
}

export interface ITensor {
  name: string;
  shape: number[];
  datatype: string;
  data: unknown[];
}

export interface IInference {
  model_name: string;
  model_version: string;
  inputs: ITensor[];
  outputs: ITensor[];
  ms: number;
}

export interface IDeployRequest {
  model: string;
  name: string;
  target: string;
}

/** Statuses in which a deployment is still changing. */
export const ACTIVE_STATUSES = ['deploying', 'rolling-back', 'undeploying'];

export function getModelChoices(): Promise<IModelChoices> {
  return call<IModelChoices>('GET', ['deploy', 'models']);
}

export async function listDeployments(): Promise<IDeployment[]> {
  const data = await call<any>('GET', ['deployments']);
  return (Array.isArray(data) ? data : data.deployments ?? []) as IDeployment[];
}

export function deploy(request: IDeployRequest): Promise<IDeployment> {
  return call<IDeployment>('POST', ['deployments'], undefined, request);
}

export function getDeployment(id: string): Promise<IDeployment> {
  return call<IDeployment>('GET', ['deployments', id]);
}

export function undeploy(id: string): Promise<IDeployment> {
  return call<IDeployment>('DELETE', ['deployments', id]);
}

export function rollback(id: string): Promise<IDeployment> {
  return call<IDeployment>('POST', ['deployments', id, 'rollback'], undefined, {});
}

export function testInference(id: string): Promise<IInference> {
  return call<IInference>('POST', ['deployments', id, 'infer'], undefined, { sample: true });
}

export function getSnippet(id: string): Promise<ISnippet> {
  return call<ISnippet>('GET', ['deployments', id, 'snippet']);
}

/** Long poll: events after `after`, waiting up to `wait` seconds for one. */
export function deploymentEvents(id: string, after: number, wait: number): Promise<IDeployEvents> {
  return call<IDeployEvents>('GET', ['deployments', id, 'events'], { after, wait });
}
