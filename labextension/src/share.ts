/**
 * The Experiments panel's Share control: which hub groups the selected
 * experiment is shared with, share it with another group, unshare. MLflow
 * enforces it (a hub group is an MLflow role whose members follow the group);
 * only the experiment's owner (MANAGE) may change it, the API says so otherwise.
 */
import * as api from './api';
import { h, replace } from './dom';

export class ShareSection {
  /** The toolbar button that shows and hides the section. */
  readonly button: HTMLButtonElement;
  /** The section itself (hidden until the button is pressed). */
  readonly node: HTMLElement;

  constructor() {
    this.button = h(
      'button',
      {
        class: 'jp-fedhub-button',
        type: 'button',
        title: 'Share this experiment with a hub group',
        'aria-expanded': 'false',
        disabled: true,
        onclick: () => this.toggle()
      },
      'Share'
    );
    this.groupInput = h('input', {
      type: 'text',
      class: 'jp-fedhub-input',
      'aria-label': 'Hub group',
      placeholder: 'hub group'
    });
    this.permissionSelect = h(
      'select',
      { 'aria-label': 'Permission' },
      ...api.SHARE_PERMISSIONS.map(p => h('option', { value: p }, p))
    );
    this.shareButton = h(
      'button',
      {
        class: 'jp-fedhub-button jp-mod-accept',
        type: 'button',
        onclick: () => void this.share()
      },
      'Share with group'
    );
    this.list = h('ul', { class: 'jp-fedhub-list', 'aria-label': 'Shared with' });
    this.status = h('div', { class: 'jp-fedhub-message', role: 'status', 'aria-live': 'polite' });
    this.node = h(
      'section',
      { class: 'jp-fedhub-section', 'aria-label': 'Sharing', hidden: true },
      this.list,
      h(
        'div',
        { class: 'jp-fedhub-toolbar' },
        this.groupInput,
        this.permissionSelect,
        this.shareButton
      ),
      this.status
    );
  }

  /** The experiment the panel shows (null: none). */
  setExperiment(id: string | null): void {
    this.experimentId = id;
    this.button.disabled = id === null;
    replace(this.status);
    if (id === null) {
      this.node.hidden = true;
      this.button.setAttribute('aria-expanded', 'false');
    } else if (!this.node.hidden) {
      void this.load();
    }
  }

  private toggle(): void {
    this.node.hidden = !this.node.hidden;
    this.button.setAttribute('aria-expanded', String(!this.node.hidden));
    if (!this.node.hidden) {
      void this.load();
    }
  }

  private async load(): Promise<void> {
    const id = this.experimentId;
    if (id === null) {
      return;
    }
    const seq = ++this.seq;
    try {
      const result = await api.getShares(id);
      if (seq === this.seq) {
        this.render(result.shares);
      }
    } catch (err) {
      if (seq === this.seq) {
        this.error('Cannot list shares', err);
      }
    }
  }

  private render(shares: api.IShare[]): void {
    if (!shares.length) {
      replace(this.list, h('li', { class: 'jp-fedhub-muted' }, 'Not shared with any group'));
      return;
    }
    replace(
      this.list,
      ...shares.map(s =>
        h(
          'li',
          {},
          `${s.group} (${s.permission}) `,
          h(
            'button',
            {
              class: 'jp-fedhub-button',
              type: 'button',
              'aria-label': `Unshare from ${s.group}`,
              onclick: () => void this.unshare(s.group)
            },
            'Unshare'
          )
        )
      )
    );
  }

  private async share(): Promise<void> {
    const id = this.experimentId;
    const group = this.groupInput.value.trim();
    if (id === null || !group) {
      replace(this.status, h('p', { class: 'jp-fedhub-error', role: 'alert' }, 'Name a hub group'));
      return;
    }
    this.shareButton.disabled = true;
    try {
      const s = await api.shareExperiment(
        id,
        group,
        this.permissionSelect.value as api.SharePermission
      );
      replace(this.status, `Shared with ${s.group} (${s.permission})`);
      this.groupInput.value = '';
      await this.load();
    } catch (err) {
      this.error('Cannot share', err);
    } finally {
      this.shareButton.disabled = false;
    }
  }

  private async unshare(group: string): Promise<void> {
    const id = this.experimentId;
    if (id === null) {
      return;
    }
    try {
      await api.unshareExperiment(id, group);
      replace(this.status, `No longer shared with ${group}`);
      await this.load();
    } catch (err) {
      this.error('Cannot unshare', err);
    }
  }

  private error(what: string, err: unknown): void {
    const message = err instanceof Error ? err.message : String(err ?? 'unknown error');
    replace(this.status, h('p', { class: 'jp-fedhub-error', role: 'alert' }, `${what}: ${message}`));
  }

  private readonly groupInput: HTMLInputElement;
  private readonly permissionSelect: HTMLSelectElement;
  private readonly shareButton: HTMLButtonElement;
  private readonly list: HTMLElement;
  private readonly status: HTMLElement;
  private experimentId: string | null = null;
  private seq = 0;
}
