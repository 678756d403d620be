/** The status-bar item: this session's site and GPUs, and its end when it has a time limit. */
import { Widget } from '@lumino/widgets';

import * as api from './api';
import { formatEnd, IExpiryRecord, onExpiryChange } from './expiry';

/** "fedhub: local-a · a100 ×1", "fedhub: local-a · no GPU" or "fedhub: standalone". */
export function statusText(s: api.ISessionInfo): string {
  if (s.mode !== 'hub') {
    return 'fedhub: standalone';
  }
  const raw: unknown = s.gpus;
  const n = Array.isArray(raw) ? raw.length : Number(raw ?? 0) || 0;
  const gpus = n > 0 ? `${s.gpu_type || 'GPU'} ×${n}` : 'no GPU';
  return `fedhub: ${s.site || 'unknown site'} · ${gpus}`;
}

export class StatusItem extends Widget {
  constructor() {
    super({ node: document.createElement('span') });
    this.id = 'fedhub-status';
    this.addClass('jp-fedhub-status');
    this.node.textContent = 'fedhub: …';
    this.node.setAttribute('aria-label', 'fedhub: loading');
    this.node.setAttribute('role', 'status');
    onExpiryChange(rec => this.showEnd(rec));
    void this.load();
  }

  private _base = '';
  private _end = '';

  /** " · ends 19:58" after the site and GPUs (the expiry monitor calls this). */
  showEnd(rec: IExpiryRecord | null): void {
    this._end = rec ? ` · ends ${formatEnd(rec.end)}` : '';
    this._render();
  }

  private _render(): void {
    if (this._base) {
      this.node.textContent = this._base + this._end;
      this.node.setAttribute('aria-label', this._base + this._end);
    }
  }

  async load(): Promise<void> {
    try {
      const s = await api.getSession();
      this._base = statusText(s);
      this._render();
      const details = [
        s.user && `user ${s.user}`,
        s.node && `node ${s.node}`,
        s.cuda_visible_devices && `CUDA_VISIBLE_DEVICES=${s.cuda_visible_devices}`,
        s.session_type && `session ${s.session_type}`
      ].filter(Boolean);
      this.node.title = details.length ? details.join(' · ') : statusText(s);
    } catch (err) {
      this.node.textContent = 'fedhub: unavailable';
      this.node.setAttribute('aria-label', 'fedhub: unavailable');
      this.node.title = err instanceof Error ? err.message : String(err);
    }
  }
}
