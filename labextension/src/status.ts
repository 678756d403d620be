/** The status-bar item: this session's site and GPUs. */
import { Widget } from '@lumino/widgets';

import * as api from './api';

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
    void this.load();
  }

  async load(): Promise<void> {
    try {
      const s = await api.getSession();
      this.node.textContent = statusText(s);
      this.node.setAttribute('aria-label', statusText(s));
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
