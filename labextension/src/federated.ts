/**
 * The Federated panel: launch a Flower app over the federation's sites and watch it
 * live (per-round metrics and bytes, each site's status, failures with the log tail),
 * cancel it, and look back at past jobs.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';
import { LabIcon } from '@jupyterlab/ui-components';

import { ISeriesInput, MetricChart } from './charts';
import { append, formatBytes, formatTime, formatValue, h, replace } from './dom';
import * as jobsApi from './jobsApi';
import { LivePanel, WAIT_S, fieldRow, showError, spinner } from './panel';

export const federatedIcon = new LabIcon({
  name: 'fedhub:federated',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<path class="jp-icon3" fill="#616161" d="M12 2a3 3 0 0 1 1 5.83V10h4.17A3 3 0 1 1 17 12h-4v2.17A3 3 0 1 1 11 14.17V12H7a3 3 0 1 1 .17-2H11V7.83A3 3 0 0 1 12 2z"/>' +
    '</svg>'
});

/** Keys of a round record that are not per-round figures (per-site details, timestamps). */
const NOT_FIGURES = new Set(['round', 'time', 'nodes']);

/**
 * `{round, metrics: {train_loss}, bytes_round: 10, nodes: {...}}` ->
 * `{train_loss: .., bytes_round: 10}`: numbers only, the `metrics.` level dropped.
 */
export function flattenRound(r: jobsApi.IRoundMetrics): { [key: string]: number } {
  const out: { [key: string]: number } = {};
  const walk = (prefix: string, v: unknown): void => {
    if (typeof v === 'number' && isFinite(v)) {
      out[prefix] = v;
    } else if (v && typeof v === 'object' && !Array.isArray(v)) {
      for (const [k, x] of Object.entries(v as { [k: string]: unknown })) {
        walk(prefix ? `${prefix}.${k}` : k, x);
      }
    }
  };
  for (const [k, v] of Object.entries(r)) {
    if (!NOT_FIGURES.has(k)) {
      walk(k === 'metrics' ? '' : k, v);
    }
  }
  return out;
}

/** Per-round series, split into the model's metrics and the bytes on the wire. */
export function roundSeries(rounds: jobsApi.IRoundMetrics[]): {
  metrics: ISeriesInput[];
  bytes: ISeriesInput[];
} {
  const byKey = new Map<string, ISeriesInput>();
  for (const r of rounds) {
    const flat = flattenRound(r);
    for (const [key, value] of Object.entries(flat)) {
      if (!byKey.has(key)) {
        byKey.set(key, { label: key, history: [] });
      }
      byKey.get(key)!.history.push({ step: Number(r.round), timestamp: 0, value });
    }
  }
  const all = [...byKey.values()].sort((a, b) => a.label.localeCompare(b.label));
  const isBytes = (s: ISeriesInput) => /bytes|traffic/i.test(s.label);
  return { metrics: all.filter(s => !isBytes(s)), bytes: all.filter(isBytes) };
}

/** `{codec: 'topk', ratio: 0.1}` -> `topk 0.1`; no compression -> `none`. */
export function compressionLabel(c: unknown): string {
  if (!c) {
    return 'none';
  }
  if (typeof c === 'string') {
    return c;
  }
  const o = c as { [key: string]: unknown };
  const kind = String(o.codec ?? o.kind ?? 'custom');
  const ratio = o.ratio ?? o.k;
  return ratio === undefined ? kind : `${kind} ${ratio}`;
}

/** The app's folder name: the hub keeps the absolute path. */
function appName(job: jobsApi.IJob): string {
  return (job.app_display || job.app || '').replace(/\/+$/, '').split('/').pop() ?? '';
}

function isFinal(state: string | undefined): boolean {
  return !!state && jobsApi.FINAL_STATES.includes(state);
}

export class FederatedPanel extends LivePanel {
  constructor() {
    super('fedhub-federated', 'Federated', 'jp-fedhub-federated');
    this.title.icon = federatedIcon;
    this.refreshButton.title = 'Reload apps, sites and jobs';

    this.appSelect = h('select', { id: 'jp-fedhub-fl-app', 'aria-label': 'Flower app' });
    this.appInfo = h('div', { class: 'jp-fedhub-muted' });
    this.sitesBox = h('fieldset', { class: 'jp-fedhub-sites-box' });
    this.roundsInput = h('input', {
      id: 'jp-fedhub-fl-rounds',
      type: 'number',
      min: 1,
      max: 1000,
      value: '3',
      'aria-label': 'Rounds'
    });
    this.strategySelect = h(
      'select',
      { id: 'jp-fedhub-fl-strategy', 'aria-label': 'Strategy' },
      h('option', { value: 'fedavg' }, 'FedAvg'),
      h('option', { value: 'fedprox' }, 'FedProx'),
      h('option', { value: 'fedadam' }, 'FedAdam')
    );
    this.compressionSelect = h(
      'select',
      { id: 'jp-fedhub-fl-compression', 'aria-label': 'Compression' },
      h('option', { value: 'none' }, 'None (fp32)'),
      h('option', { value: 'int8' }, '8-bit quantisation'),
      h('option', { value: 'topk' }, 'Top-k sparsification + error feedback')
    );
    this.launchButton = h(
      'button',
      {
        class: 'jp-fedhub-button jp-mod-accept',
        type: 'button',
        onclick: () => void this.launch()
      },
      'Launch'
    );
    this.formStatus = h('div', { class: 'jp-fedhub-message', role: 'status', 'aria-live': 'polite' });
    this.jobSection = h('section', {
      class: 'jp-fedhub-section',
      'aria-label': 'Current job',
      hidden: true
    });
    this.jobsTable = h('table', { class: 'jp-fedhub-table', 'aria-label': 'Jobs' });
    this.jobsStatus = h('div', { class: 'jp-fedhub-message' });

    const row = fieldRow;

    append(
      this.node,
      this.header,
      h(
        'form',
        {
          class: 'jp-fedhub-form',
          'aria-label': 'Launch a federated job',
          onsubmit: (e: Event) => {
            e.preventDefault();
            void this.launch();
          }
        },
        row('Flower app', 'jp-fedhub-fl-app', this.appSelect),
        this.appInfo,
        this.sitesBox,
        row('Rounds', 'jp-fedhub-fl-rounds', this.roundsInput),
        row('Strategy', 'jp-fedhub-fl-strategy', this.strategySelect),
        row('Compression', 'jp-fedhub-fl-compression', this.compressionSelect),
        h('div', { class: 'jp-fedhub-toolbar' }, this.launchButton)
      ),
      this.formStatus,
      this.jobSection,
      h(
        'section',
        { class: 'jp-fedhub-section', 'aria-label': 'Past jobs' },
        h('h3', {}, 'Jobs'),
        this.jobsStatus,
        h('div', { class: 'jp-fedhub-table-scroll' }, this.jobsTable)
      )
    );
    this.appSelect.addEventListener('change', () => this.renderAppInfo());
    this.renderSites();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.disposeCharts();
    super.dispose();
  }

  /** Reload the apps, the sites and the jobs list. */
  protected async load(): Promise<void> {
    await Promise.all([this.loadApps(), this.loadSites(), this.loadJobs()]);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.resizeCharts();
  }

  protected onResize(msg: Widget.ResizeMessage): void {
    super.onResize(msg);
    this.resizeCharts();
  }

  // ------------------------------------------------------------ form

  private async loadApps(): Promise<void> {
    try {
      const listed = await jobsApi.getFlowerApps();
      this.apps = listed.apps;
      const keep = this.appSelect.value;
      replace(
        this.appSelect,
        ...listed.apps.map(a =>
          h(
            'option',
            { value: a.path, disabled: !!a.error },
            a.path === '.' ? `${a.name ?? 'app'} (workspace root)` : a.path
          )
        )
      );
      if (listed.apps.some(a => a.path === keep)) {
        this.appSelect.value = keep;
      } else {
        const first = listed.apps.find(a => !a.error);
        if (first) {
          this.appSelect.value = first.path;
        }
      }
      this.appSelect.disabled = !listed.apps.length;
      this.renderAppInfo();
      if (!listed.apps.length) {
        replace(
          this.appInfo,
          'No Flower app in your workspace: a Flower app is a folder with a pyproject.toml that has a ',
          h('code', {}, '[tool.flwr.app]'),
          ' table (searched 3 levels deep).'
        );
      }
    } catch (err) {
      replace(
        this.appInfo,
        h('p', { class: 'jp-fedhub-error', role: 'alert' }, `Cannot list apps: ${jobsApi.errorMessage(err)}`)
      );
    }
    this.updateLaunch();
  }

  private renderAppInfo(): void {
    const app = this.apps.find(a => a.path === this.appSelect.value);
    if (!app) {
      replace(this.appInfo);
      return;
    }
    if (app.error) {
      replace(this.appInfo, h('span', { class: 'jp-fedhub-error' }, app.error));
      return;
    }
    const rounds = app.config?.['num-server-rounds'];
    replace(
      this.appInfo,
      `${app.name ?? ''} ${app.version ?? ''}`.trim(),
      app.serverapp ? ` · server ${app.serverapp}` : '',
      rounds !== undefined ? ` · app default ${rounds} rounds` : ''
    );
  }

  private async loadSites(): Promise<void> {
    this.sitesError = '';
    try {
      this.sites = await jobsApi.getFederationSites();
    } catch (err) {
      this.sites = [];
      this.sitesError = jobsApi.errorMessage(err);
    }
    this.renderSites();
    this.updateLaunch();
  }

  private renderSites(): void {
    const legend = h('legend', {}, 'Sites');
    if (this.sitesError) {
      replace(
        this.sitesBox,
        legend,
        h('p', { class: 'jp-fedhub-error', role: 'alert' }, `Cannot list sites: ${this.sitesError}`)
      );
      return;
    }
    if (!this.sites.length) {
      replace(this.sitesBox, legend, h('p', { class: 'jp-fedhub-muted' }, 'Loading sites…'));
      return;
    }
    const items = this.sites.map(s => {
      const id = `jp-fedhub-fl-site-${s.name}`;
      const box = h('input', {
        type: 'checkbox',
        id,
        value: s.name,
        disabled: !s.allowed,
        checked: s.allowed && this.checkedSites.has(s.name),
        'aria-describedby': `${id}-why`,
        onchange: (e: Event) => {
          if ((e.target as HTMLInputElement).checked) {
            this.checkedSites.add(s.name);
          } else {
            this.checkedSites.delete(s.name);
          }
          this.updateLaunch();
        }
      });
      return h(
        'div',
        { class: `jp-fedhub-site-option${s.allowed ? '' : ' jp-fedhub-disabled'}` },
        box,
        h('label', { for: id }, s.name),
        h('span', { class: 'jp-fedhub-muted' }, ` (${s.kind})`),
        h(
          'div',
          { id: `${id}-why`, class: s.allowed ? 'jp-fedhub-muted' : 'jp-fedhub-why-not' },
          s.allowed ? s.reason || 'allowed' : `not offered: ${s.reason}`
        )
      );
    });
    replace(this.sitesBox, legend, ...items);
  }

  private updateLaunch(): void {
    const app = this.apps.find(a => a.path === this.appSelect.value);
    const sites = this.selectedSites();
    this.launchButton.disabled = this.launching || !app || !!app.error || !sites.length;
    this.launchButton.title = !app
      ? 'Pick a Flower app'
      : !sites.length
        ? 'Pick at least one site'
        : 'Start the federated job';
  }

  private selectedSites(): string[] {
    return this.sites.filter(s => s.allowed && this.checkedSites.has(s.name)).map(s => s.name);
  }

  private async launch(): Promise<void> {
    const rounds = Number(this.roundsInput.value);
    if (!Number.isInteger(rounds) || rounds < 1) {
      showError(this.formStatus, 'Cannot launch', new Error('Rounds: expected a whole number ≥ 1'));
      return;
    }
    this.launching = true;
    this.updateLaunch();
    replace(this.formStatus, spinner('Launching…'));
    try {
      const job = await jobsApi.launchJob({
        app: this.appSelect.value,
        sites: this.selectedSites(),
        rounds,
        strategy: this.strategySelect.value,
        compression: this.compressionSelect.value
      });
      replace(this.formStatus, `Launched job ${job.id}.`);
      void this.loadJobs();
      void this.follow(job.id, job);
    } catch (err) {
      showError(this.formStatus, 'Cannot launch', err);
    } finally {
      this.launching = false;
      this.updateLaunch();
    }
  }

  // ------------------------------------------------------------ one job, live

  /** Show a job and follow its events until it ends (or another job is shown). */
  private async follow(id: string, first?: jobsApi.IJob): Promise<void> {
    const seq = this.newFollow();
    this.job = first ?? null;
    this.renderedRounds = -1;
    this.jobSection.hidden = false;
    if (first) {
      this.renderJob(null);
    } else {
      replace(this.jobSection, h('h3', {}, `Job ${id}`), spinner('Loading job…'));
    }
    let after = 0;
    const step = async (): Promise<boolean> => {
      const job = await jobsApi.getJob(id);
      if (!this.following(seq)) {
        return false;
      }
      this.job = job;
      this.renderJob(null);
      if (isFinal(job.state)) {
        void this.loadJobs();
        return false;
      }
      const ev = await jobsApi.jobEvents(id, after, WAIT_S);
      const seqs = ev.events.map(e => Number(e.seq ?? 0));
      const next = ev.last ?? ev.next ?? Math.max(after, ...seqs);
      after = next > after ? next : after + ev.events.length;
      return true;
    };
    await this.followLoop(seq, step, err => this.renderJob(err));
  }

  private renderJob(error: unknown): void {
    const job = this.job;
    if (!job) {
      const box = h('div', { class: 'jp-fedhub-message' });
      showError(box, 'Cannot load the job', error);
      replace(this.jobSection, h('h3', {}, 'Job'), box);
      return;
    }
    const done = job.rounds_done ?? job.round_metrics?.length ?? 0;
    const final = isFinal(job.state);
    const cancel = h(
      'button',
      {
        class: 'jp-fedhub-button',
        type: 'button',
        disabled: final,
        onclick: () => void this.cancel(job.id)
      },
      'Cancel'
    );
    const progress = h('progress', {
      max: job.rounds,
      value: done,
      'aria-label': 'Rounds done'
    });
    const header = h(
      'div',
      { class: 'jp-fedhub-job-head' },
      h('h3', {}, `Job ${job.name || job.id}`),
      h(
        'p',
        { role: 'status', 'aria-live': 'polite', class: `jp-fedhub-job-state jp-fedhub-status-${job.state}` },
        !final && h('span', { class: 'jp-fedhub-spinner', 'aria-hidden': 'true' }),
        `State: ${job.state} · round ${done} of ${job.rounds}`
      ),
      h('div', { class: 'jp-fedhub-toolbar' }, progress, cancel),
      h(
        'p',
        { class: 'jp-fedhub-muted' },
        `${appName(job)} · ${job.strategy}` +
          ` · compression ${compressionLabel(job.compression)}` +
          (job.mlflow_run_id ? ` · MLflow run ${job.mlflow_run_id}` : '')
      )
    );
    const failure =
      (job.state === 'failed' || job.error) &&
      h(
        'div',
        { class: 'jp-fedhub-failure', role: 'alert' },
        h('p', { class: 'jp-fedhub-error' }, `Failed: ${job.error || 'no reason given'}`),
        job.log_tail && h('pre', { class: 'jp-fedhub-log', 'aria-label': 'Log tail' }, job.log_tail)
      );
    const warnings =
      job.warnings && job.warnings.length
        ? h('ul', { class: 'jp-fedhub-warnings' }, ...job.warnings.map(w => h('li', {}, String(w))))
        : null;
    const sitesTable = h(
      'table',
      { class: 'jp-fedhub-table', 'aria-label': 'Site status' },
      h(
        'thead',
        {},
        h('tr', {}, ...['Site', 'State', 'Detail'].map(t => h('th', { scope: 'col' }, t)))
      ),
      h(
        'tbody',
        {},
        ...Object.entries(job.site_status ?? {}).map(([site, s]) =>
          h(
            'tr',
            {},
            h('th', { scope: 'row' }, site),
            h('td', { class: `jp-fedhub-status-${s.state}` }, s.state),
            h('td', { class: 'jp-fedhub-detail' }, s.detail ?? '')
          )
        )
      )
    );
    const bytes = job.bytes && Object.keys(job.bytes).length
      ? h(
          'p',
          { class: 'jp-fedhub-muted' },
          'Traffic: ',
          Object.entries(job.bytes)
            .filter(([, v]) => typeof v === 'number')
            .map(([k, v]) => `${k} ${formatBytes(v as number)}`)
            .join(' · ')
        )
      : null;
    if (done !== this.renderedRounds || !this.chartsHost) {
      this.renderedRounds = done;
      this.chartsHost = this.renderCharts(job);
    }
    replace(
      this.jobSection,
      header,
      failure,
      warnings,
      h('div', { class: 'jp-fedhub-table-scroll' }, sitesTable),
      this.chartsHost,
      bytes,
      this.roundsTable(job)
    );
  }

  private renderCharts(job: jobsApi.IJob): HTMLElement {
    this.disposeCharts();
    const host = h('div', { class: 'jp-fedhub-charts', 'aria-label': 'Per-round charts' });
    const { metrics, bytes } = roundSeries(job.round_metrics ?? []);
    if (!metrics.length && !bytes.length) {
      host.appendChild(h('p', { class: 'jp-fedhub-muted' }, 'No round has finished yet.'));
      return host;
    }
    const width = this.chartWidth();
    if (metrics.length) {
      this.charts.push(new MetricChart('Metrics per round', metrics, width));
    }
    if (bytes.length) {
      this.charts.push(new MetricChart('Bytes per round', bytes, width));
    }
    for (const c of this.charts) {
      host.appendChild(c.node);
    }
    return host;
  }

  private roundsTable(job: jobsApi.IJob): HTMLElement | null {
    const rounds = job.round_metrics ?? [];
    if (!rounds.length) {
      return null;
    }
    const flat = rounds.map(flattenRound);
    const keys = [...new Set(flat.flatMap(f => Object.keys(f)))].sort();
    return h(
      'div',
      { class: 'jp-fedhub-table-scroll' },
      h(
        'table',
        { class: 'jp-fedhub-table', 'aria-label': 'Per-round figures' },
        h(
          'thead',
          {},
          h('tr', {}, h('th', { scope: 'col' }, 'Round'), ...keys.map(k => h('th', { scope: 'col' }, k)))
        ),
        h(
          'tbody',
          {},
          ...rounds.map((r, i) =>
            h(
              'tr',
              {},
              h('th', { scope: 'row' }, String(r.round)),
              ...keys.map(k =>
                h(
                  'td',
                  { class: 'jp-fedhub-col-metrics' },
                  /bytes/i.test(k) ? formatBytes(flat[i][k]) : formatValue(flat[i][k])
                )
              )
            )
          )
        )
      )
    );
  }

  private async cancel(id: string): Promise<void> {
    try {
      this.job = await jobsApi.cancelJob(id);
      this.renderJob(null);
    } catch (err) {
      showError(this.formStatus, 'Cannot cancel', err);
    }
  }

  // ------------------------------------------------------------ past jobs

  private async loadJobs(): Promise<void> {
    try {
      const jobs = await jobsApi.listJobs();
      replace(this.jobsStatus);
      if (!jobs.length) {
        replace(this.jobsTable);
        replace(this.jobsStatus, h('p', { class: 'jp-fedhub-muted' }, 'No federated jobs yet.'));
        return;
      }
      const sorted = [...jobs].sort((a, b) => (b.created ?? 0) - (a.created ?? 0));
      replace(
        this.jobsTable,
        h(
          'thead',
          {},
          h('tr', {}, ...['Job', 'App', 'State', 'Rounds', 'Sites', 'Created'].map(t => h('th', { scope: 'col' }, t)))
        ),
        h(
          'tbody',
          {},
          ...sorted.map(j =>
            h(
              'tr',
              { class: this.job?.id === j.id ? 'jp-mod-selected' : null },
              h(
                'th',
                { scope: 'row' },
                h(
                  'button',
                  {
                    type: 'button',
                    class: 'jp-fedhub-linkbutton',
                    title: 'Show this job',
                    onclick: () => void this.follow(j.id)
                  },
                  j.name || j.id
                )
              ),
              h('td', {}, appName(j)),
              h('td', { class: `jp-fedhub-status-${j.state}` }, j.state),
              h('td', {}, `${j.rounds_done ?? j.round_metrics?.length ?? 0}/${j.rounds}`),
              h('td', {}, (j.sites ?? []).join(', ')),
              h('td', {}, formatTime(j.created ? j.created * 1000 : null))
            )
          )
        )
      );
    } catch (err) {
      replace(this.jobsTable);
      showError(this.jobsStatus, 'Cannot list jobs', err);
    }
  }

  // ------------------------------------------------------------ helpers

  private chartWidth(): number {
    const w = this.node.clientWidth - 32;
    return w > 0 ? w : 300;
  }

  private resizeCharts(): void {
    if (this.isVisible) {
      const w = this.chartWidth();
      for (const c of this.charts) {
        c.resize(w);
      }
    }
  }

  private disposeCharts(): void {
    for (const c of this.charts.splice(0)) {
      c.dispose();
    }
    this.chartsHost = null;
  }

  private readonly appSelect: HTMLSelectElement;
  private readonly appInfo: HTMLElement;
  private readonly sitesBox: HTMLFieldSetElement;
  private readonly roundsInput: HTMLInputElement;
  private readonly strategySelect: HTMLSelectElement;
  private readonly compressionSelect: HTMLSelectElement;
  private readonly launchButton: HTMLButtonElement;
  private readonly formStatus: HTMLElement;
  private readonly jobSection: HTMLElement;
  private readonly jobsTable: HTMLTableElement;
  private readonly jobsStatus: HTMLElement;

  private launching = false;
  private apps: jobsApi.IFlowerApp[] = [];
  private sites: jobsApi.IFederationSite[] = [];
  private sitesError = '';
  private readonly checkedSites = new Set<string>();
  private job: jobsApi.IJob | null = null;
  private renderedRounds = -1;
  private chartsHost: HTMLElement | null = null;
  private readonly charts: MetricChart[] = [];
}
