/** The Sites panel: the federation's live inventory, refreshed every 10 s while shown. */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import * as api from './api';
import { append, formatBytes, formatCount, formatTime, h, replace } from './dom';
import { sitesIcon } from './icons';

/** Auto-refresh period, in ms. */
export const SITES_REFRESH_MS = 10_000;

export class SitesPanel extends Widget {
  constructor() {
    super();
    this.id = 'fedhub-sites';
    this.addClass('jp-fedhub-panel');
    this.addClass('jp-fedhub-sites');
    this.title.icon = sitesIcon;
    this.title.caption = 'Sites';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Sites');

    this.refreshButton = h(
      'button',
      {
        class: 'jp-fedhub-button',
        type: 'button',
        title: `Reload now (it reloads every ${SITES_REFRESH_MS / 1000} s)`,
        onclick: () => void this.refresh()
      },
      'Refresh'
    );
    this.status = h('div', {
      class: 'jp-fedhub-message',
      role: 'status',
      'aria-live': 'polite'
    });
    this.error = h('div', { class: 'jp-fedhub-message' });
    this.table = h('table', { class: 'jp-fedhub-table', 'aria-label': 'Sites' });
    append(
      this.node,
      h(
        'header',
        { class: 'jp-fedhub-header' },
        h('h2', { class: 'jp-fedhub-title' }, 'Sites'),
        this.refreshButton
      ),
      this.error,
      h('div', { class: 'jp-fedhub-table-scroll' }, this.table),
      this.status
    );
  }

  dispose(): void {
    this.stopTimer();
    super.dispose();
  }

  /** Load the inventory now. */
  async refresh(): Promise<void> {
    const seq = ++this.seq;
    if (!this.loaded) {
      replace(this.status, 'Loading sites…');
    }
    this.table.setAttribute('aria-busy', 'true');
    try {
      const [inventory, session] = await Promise.all([
        api.getSites(),
        api.getSession().catch(() => null)
      ]);
      if (seq !== this.seq) {
        return;
      }
      this.loaded = true;
      replace(this.error);
      this.render(inventory, session);
    } catch (err) {
      if (seq !== this.seq) {
        return;
      }
      const message = err instanceof Error ? err.message : String(err);
      replace(
        this.error,
        h('p', { class: 'jp-fedhub-error', role: 'alert' }, `Cannot load sites: ${message}`)
      );
      if (!this.loaded) {
        replace(this.status);
      }
    } finally {
      if (seq === this.seq) {
        this.table.removeAttribute('aria-busy');
      }
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
    this.startTimer();
  }

  protected onBeforeHide(msg: Message): void {
    super.onBeforeHide(msg);
    this.stopTimer();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      void this.refresh();
      this.startTimer();
    }
  }

  protected onBeforeDetach(msg: Message): void {
    this.stopTimer();
    super.onBeforeDetach(msg);
  }

  private startTimer(): void {
    this.stopTimer();
    this.timer = window.setInterval(() => void this.refresh(), SITES_REFRESH_MS);
  }

  private stopTimer(): void {
    if (this.timer !== null) {
      window.clearInterval(this.timer);
      this.timer = null;
    }
  }

  private render(inventory: api.ISites, session: api.ISessionInfo | null): void {
    const sites = inventory.sites;
    if (!sites.length) {
      replace(this.table);
      replace(
        this.status,
        h(
          'p',
          { class: 'jp-fedhub-muted' },
          session?.mode === 'standalone'
            ? 'No sites: this session runs standalone, without a fedhub hub, so there is no federation to show.'
            : 'No sites yet: the hub has not loaded its site inventory.'
        )
      );
      return;
    }
    const head = h(
      'tr',
      {},
      ...['Site', 'Kind', 'State', 'Sessions', 'CPUs free', 'Memory free', 'GPUs free'].map(t =>
        h('th', { scope: 'col' }, t)
      )
    );
    const rows = sites.map(s => {
      const mine = session?.mode === 'hub' && session.site === s.name;
      return h(
        'tr',
        { class: `${s.up ? 'jp-fedhub-up' : 'jp-fedhub-down'}${mine ? ' jp-mod-selected' : ''}` },
        h(
          'th',
          { scope: 'row', title: mine ? 'This session runs here' : null },
          s.name,
          mine && h('span', { class: 'jp-fedhub-badge' }, ' (this session)')
        ),
        h('td', {}, s.kind),
        h(
          'td',
          { class: s.up ? 'jp-fedhub-state-up' : 'jp-fedhub-state-down' },
          s.up ? 'up' : `down${s.down_reason ? `: ${s.down_reason}` : ''}`
        ),
        h(
          'td',
          {},
          s.max_sessions === null || s.max_sessions === undefined
            ? String(s.sessions)
            : `${s.sessions}/${s.max_sessions}`
        ),
        h('td', {}, `${formatCount(s.cpus?.free)}/${formatCount(s.cpus?.capacity)}`),
        h('td', {}, `${formatBytes(s.memory?.free)}/${formatBytes(s.memory?.capacity)}`),
        h(
          'td',
          {},
          s.gpus && s.gpus.length
            ? s.gpus
                .map(g => `${g.type} ${formatCount(g.free)}/${formatCount(g.capacity)}`)
                .join(', ')
            : 'none'
        )
      );
    });
    replace(this.table, h('thead', {}, head), h('tbody', {}, ...rows));
    replace(
      this.status,
      h(
        'p',
        { class: 'jp-fedhub-muted' },
        `${sites.length} site${sites.length === 1 ? '' : 's'}` +
          (inventory.updated ? ` · inventory changed ${formatTime(inventory.updated * 1000)}` : '') +
          ` · checked ${formatTime(Date.now())}`
      )
    );
  }

  private readonly refreshButton: HTMLButtonElement;
  private readonly status: HTMLElement;
  private readonly error: HTMLElement;
  private readonly table: HTMLTableElement;
  private timer: number | null = null;
  private loaded = false;
  private seq = 0;
}
