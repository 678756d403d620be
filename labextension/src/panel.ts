/**
 * What the Deploy and Federated panels share: the first load when the panel is first
 * shown, a header with a Refresh button, labelled form rows, spinners and error lines,
 * and following one long action (a job, a deployment) with a long-poll loop that stops
 * when the panel starts following something else.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { errorMessage } from './api';
import { h, replace } from './dom';

/** How long one events long-poll waits on the hub, in seconds. */
export const WAIT_S = 20;

/** Network errors in a row before following gives up. */
export const MAX_ERRORS = 5;

/** A spinner with a line of text. */
export function spinner(text: string): HTMLElement {
  return h(
    'span',
    { class: 'jp-fedhub-loading' },
    h('span', { class: 'jp-fedhub-spinner', 'aria-hidden': 'true' }),
    text
  );
}

/** Replace `el`'s content with `what: <the error's message>` as an alert. */
export function showError(el: HTMLElement, what: string, err: unknown): void {
  replace(el, h('p', { class: 'jp-fedhub-error', role: 'alert' }, `${what}: ${errorMessage(err)}`));
}

/** A label and its control, linked by `id`. */
export function fieldRow(label: string, id: string, control: HTMLElement): HTMLElement {
  return h('div', { class: 'jp-fedhub-field' }, h('label', { for: id }, label), control);
}

export abstract class LivePanel extends Widget {
  constructor(id: string, title: string, className: string) {
    super();
    this.id = id;
    this.addClass('jp-fedhub-panel');
    this.addClass(className);
    this.title.caption = title;
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', title);
    this.refreshButton = h(
      'button',
      { class: 'jp-fedhub-button', type: 'button', onclick: () => void this.refresh() },
      'Refresh'
    );
    this.header = h(
      'header',
      { class: 'jp-fedhub-header' },
      h('h2', { class: 'jp-fedhub-title' }, title),
      this.refreshButton
    );
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.followSeq++; // a follow loop still waiting ends at its next check
    super.dispose();
  }

  /** Reload everything the panel shows; the Refresh button is off meanwhile. */
  async refresh(): Promise<void> {
    this.refreshButton.disabled = true;
    try {
      await this.load();
    } finally {
      this.refreshButton.disabled = false;
    }
  }

  /** What refresh() loads. */
  protected abstract load(): Promise<void>;

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.loadOnce();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.loadOnce();
    }
  }

  /** Start following something new: earlier follow loops end. */
  protected newFollow(): number {
    return ++this.followSeq;
  }

  /** Stop every follow loop without starting one. */
  protected stopFollowing(): void {
    this.followSeq++;
  }

  /** Whether `seq` is still what the panel follows. */
  protected following(seq: number): boolean {
    return seq === this.followSeq && !this.isDisposed;
  }

  /**
   * Run `step` (fetch, render, long-poll) until it returns false or the panel follows
   * something else. A 4xx, or more than MAX_ERRORS failures in a row, ends the loop
   * with `giveUp(err)`; other failures are retried after 2 s.
   */
  protected async followLoop(
    seq: number,
    step: () => Promise<boolean>,
    giveUp: (err: unknown) => void
  ): Promise<void> {
    let errors = 0;
    while (this.following(seq)) {
      try {
        if (!(await step())) {
          return;
        }
        errors = 0;
      } catch (err) {
        if (!this.following(seq)) {
          return;
        }
        const status = (err as { status?: number }).status ?? 0;
        if ((status >= 400 && status < 500) || ++errors > MAX_ERRORS) {
          giveUp(err);
          return;
        }
        await new Promise(resolve => window.setTimeout(resolve, 2000));
      }
    }
  }

  private loadOnce(): void {
    if (!this.loadedOnce) {
      this.loadedOnce = true;
      void this.refresh();
    }
  }

  protected readonly refreshButton: HTMLButtonElement;
  protected readonly header: HTMLElement;
  private loadedOnce = false;
  private followSeq = 0;
}
