/**
 * Session expiry in JupyterLab: polls this session's end (session API `fedhub/api/expiry`,
 * which asks the hub), shows a notification with an "Extend" button when the warning
 * phase starts, and POSTs the extension (`fedhub/api/expiry/extend`). A refusal (beyond
 * the group's limit) is shown with the hub's message, which names the limit.
 *
 * Notifications go through JupyterLab's own commands (`apputils:notify`, ...), so the
 * extension shares JupyterLab's notification centre without bundling @jupyterlab/apputils.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';

import { call } from './api';

export interface ITimeLimits {
  default_hours: number;
  max_hours: number;
  warn_minutes: number;
}

/** The hub's record of this session (docs/api.md, GET /api/expiry). */
export interface IExpiryRecord {
  server_name: string;
  /** epoch seconds */
  started: number;
  end: number;
  phase?: 'running' | 'warning' | 'expired';
  limits: ITimeLimits;
  events: { kind: string; message: string; end: number }[];
}

/** GET fedhub/api/expiry */
export interface IExpiryAnswer {
  mode: 'hub' | 'standalone';
  /** the hub's clock, epoch seconds */
  now: number | null;
  session: IExpiryRecord | null;
}

export const EXTEND_COMMAND = 'fedhub:extend-session';

/** How long one extension is: an hour, or what is left of the limit when that is less. */
export function offeredHours(rec: IExpiryRecord): number {
  const leftHours = (rec.started + rec.limits.max_hours * 3600 - rec.end) / 3600;
  // nothing left: still offer an hour, so the click answers with the hub's reason
  if (leftHours * 60 < 1) {
    return 1;
  }
  return Math.min(1, Math.floor(leftHours * 60) / 60);
}

/** "1 h", "28 min", "1.5 h". */
export function formatHours(hours: number): string {
  if (hours >= 1) {
    return `${Number(hours.toFixed(2))} h`;
  }
  return `${Math.round(hours * 60)} min`;
}

/** The end as a 24-hour local clock time, "19:58". */
export function formatEnd(end: number): string {
  return new Date(end * 1000).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit' });
}

export function phaseOf(rec: IExpiryRecord, now: number): 'running' | 'warning' | 'expired' {
  if (now >= rec.end) {
    return 'expired';
  }
  return rec.end - now <= rec.limits.warn_minutes * 60 ? 'warning' : 'running';
}

/** Milliseconds until the next poll: soon while the hub has no record yet, at the warning's
 * start while running (at most a minute, so extensions made elsewhere show), null when done. */
export function nextPollMs(answer: IExpiryAnswer | null, now: number): number | null {
  if (answer && answer.mode !== 'hub') {
    return null;
  }
  const rec = answer?.session;
  if (!rec) {
    return 5000;
  }
  const phase = phaseOf(rec, now);
  if (phase === 'expired') {
    return null;
  }
  if (phase === 'warning') {
    return 30_000;
  }
  const untilWarning = rec.end - rec.limits.warn_minutes * 60 - now;
  return Math.max(2000, Math.min(60_000, untilWarning * 1000));
}

export function warningText(rec: IExpiryRecord, now: number): string {
  const minutes = Math.max(0, Math.round((rec.end - now) / 60));
  return (
    `This session ends at ${formatEnd(rec.end)} (in ${minutes} min): save your work, ` +
    `or extend it (at most ${formatHours(rec.limits.max_hours)} in all).`
  );
}

type Listener = (rec: IExpiryRecord | null) => void;
const listeners = new Set<Listener>();

/** Called with this session's record whenever it is read or extended (the status bar shows the end). */
export function onExpiryChange(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export class ExpiryMonitor {
  private _timer: number | null = null;
  private _warned: number | null = null; // the end a warning was shown for
  private _warningId: string | null = null;
  private _record: IExpiryRecord | null = null;
  private _now = () => Date.now() / 1000;

  constructor(private _app: JupyterFrontEnd) {}

  get record(): IExpiryRecord | null {
    return this._record;
  }

  async poll(): Promise<void> {
    this._stop();
    let answer: IExpiryAnswer | null = null;
    try {
      answer = await call<IExpiryAnswer>('GET', ['expiry']);
      if (answer.now) {
        const skew = answer.now - Date.now() / 1000; // the hub's clock decides
        this._now = () => Date.now() / 1000 + skew;
      }
      this._update(answer.session);
    } catch (err) {
      console.warn('fedhub: could not read the session time limit', err);
    }
    const delay = answer ? nextPollMs(answer, this._now()) : 30_000;
    if (delay !== null) {
      this._timer = window.setTimeout(() => void this.poll(), delay);
    }
  }

  async extend(hours: number): Promise<void> {
    try {
      const rec = await call<IExpiryRecord>('POST', ['expiry', 'extend'], undefined, { hours });
      await this._dismissWarning();
      this._update(rec, false);
      this._warned = null;
      await this._notify(
        `Session extended by ${formatHours(hours)}: it now ends at ${formatEnd(rec.end)}.`,
        'success',
        { autoClose: 15_000 }
      );
    } catch (err) {
      await this._notify(
        `Could not extend the session: ${err instanceof Error ? err.message : String(err)}`,
        'error',
        { autoClose: false }
      );
    }
    await this.poll();
  }

  private _update(rec: IExpiryRecord | null, warn = true): void {
    this._record = rec;
    listeners.forEach(l => l(rec));
    if (!rec || !warn) {
      return;
    }
    if (phaseOf(rec, this._now()) === 'warning' && this._warned !== rec.end) {
      this._warned = rec.end;
      void this._showWarning(rec);
    }
  }

  private async _showWarning(rec: IExpiryRecord): Promise<void> {
    await this._dismissWarning();
    const hours = offeredHours(rec);
    this._warningId = await this._notify(warningText(rec, this._now()), 'warning', {
      autoClose: false,
      actions: [
        {
          label: `Extend ${formatHours(hours)}`,
          caption: `Extend this session by ${formatHours(hours)}`,
          commandId: EXTEND_COMMAND,
          args: { hours }
        }
      ]
    });
  }

  private async _dismissWarning(): Promise<void> {
    if (this._warningId) {
      const id = this._warningId;
      this._warningId = null;
      await this._app.commands.execute('apputils:dismiss-notification', { id });
    }
  }

  private async _notify(message: string, type: string, options: any): Promise<string | null> {
    try {
      return (await this._app.commands.execute('apputils:notify', { message, type, options })) as string;
    } catch (err) {
      console.warn('fedhub: could not show a notification', message, err);
      return null;
    }
  }

  private _stop(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }
}

export const expiryPlugin: JupyterFrontEndPlugin<void> = {
  id: 'fedhub:expiry',
  description: "This session's time limit: a warning before the end with an Extend button.",
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    const monitor = new ExpiryMonitor(app);
    app.commands.addCommand(EXTEND_COMMAND, {
      label: 'Extend this fedhub session',
      execute: args => monitor.extend(Number(args.hours ?? 1))
    });
    void app.restored.then(() => monitor.poll());
  }
};
