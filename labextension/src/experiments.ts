/**
 * The Experiments panel: the user's MLflow experiments, a sortable and
 * paginated runs table, metric charts, run comparison and reproduction.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import * as api from './api';
import { MetricChart, seriesColor } from './charts';
import { append, formatTime, formatValue, h, replace } from './dom';
import { showError } from './panel';
import { experimentsIcon } from './icons';
import { ShareSection } from './share';

/** How many metric charts a run's details show at most. */
const MAX_CHARTS = 12;

/** How often a running reproduction is polled, in ms. */
const POLL_MS = 1000;

type SortKind = 'attributes' | 'metrics' | 'params';

interface ISort {
  kind: SortKind;
  key: string;
  descending: boolean;
}

interface IColumn {
  kind: SortKind;
  key: string;
  label: string;
  /** the first click sorts descending (metrics, start time) */
  descFirst: boolean;
  cell: (run: api.IRun) => string;
}

export class ExperimentsPanel extends Widget {
  constructor() {
    super();
    this.id = 'fedhub-experiments';
    this.addClass('jp-fedhub-panel');
    this.addClass('jp-fedhub-experiments');
    this.title.icon = experimentsIcon;
    this.title.caption = 'Experiments';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Experiments');

    this.mlflowLink = h(
      'a',
      {
        class: 'jp-fedhub-link',
        target: '_blank',
        rel: 'noopener noreferrer',
        hidden: true
      },
      'Open MLflow UI'
    );
    this.experimentSelect = h('select', {
      id: 'jp-fedhub-experiment-select',
      'aria-label': 'Experiment',
      onchange: () => this.selectExperiment(this.experimentSelect.value)
    });
    this.refreshButton = h(
      'button',
      {
        class: 'jp-fedhub-button',
        type: 'button',
        title: 'Reload experiments and runs',
        onclick: () => void this.refresh()
      },
      'Refresh'
    );
    this.experimentsStatus = h('div', { class: 'jp-fedhub-message' });
    this.runsStatus = h('div', {
      class: 'jp-fedhub-message',
      role: 'status',
      'aria-live': 'polite'
    });
    this.runsError = h('div', { class: 'jp-fedhub-message' });
    this.runsTable = h('table', {
      class: 'jp-fedhub-table',
      'aria-label': 'Runs'
    });
    this.prevButton = h(
      'button',
      {
        class: 'jp-fedhub-button',
        type: 'button',
        disabled: true,
        onclick: () => this.previousPage()
      },
      'Previous page'
    );
    this.nextButton = h(
      'button',
      {
        class: 'jp-fedhub-button',
        type: 'button',
        disabled: true,
        onclick: () => this.nextPage()
      },
      'Next page'
    );
    this.pageLabel = h('span', { class: 'jp-fedhub-muted' });
    this.selectionLabel = h('span', { class: 'jp-fedhub-muted' });
    this.compareButton = h(
      'button',
      {
        class: 'jp-fedhub-button jp-mod-accept',
        type: 'button',
        disabled: true,
        title: `Select 2 to ${api.MAX_COMPARE} runs with the checkboxes`,
        onclick: () => void this.compare()
      },
      'Compare'
    );
    this.clearButton = h(
      'button',
      {
        class: 'jp-fedhub-button',
        type: 'button',
        disabled: true,
        onclick: () => this.clearSelection()
      },
      'Clear selection'
    );
    this.details = h('section', {
      class: 'jp-fedhub-section',
      'aria-label': 'Run details',
      hidden: true
    });
    this.reproduction = h('section', {
      class: 'jp-fedhub-section',
      'aria-label': 'Reproduction',
      hidden: true
    });
    this.comparison = h('section', {
      class: 'jp-fedhub-section',
      'aria-label': 'Comparison',
      hidden: true
    });

    append(
      this.node,
      h(
        'header',
        { class: 'jp-fedhub-header' },
        h('h2', { class: 'jp-fedhub-title' }, 'Experiments'),
        this.mlflowLink
      ),
      h(
        'div',
        { class: 'jp-fedhub-toolbar' },
        h('label', { for: 'jp-fedhub-experiment-select' }, 'Experiment'),
        this.experimentSelect,
        this.refreshButton,
        this.share.button
      ),
      this.share.node,
      this.experimentsStatus,
      this.runsStatus,
      this.runsError,
      h('div', { class: 'jp-fedhub-table-scroll jp-fedhub-runs-scroll' }, this.runsTable),
      h(
        'div',
        { class: 'jp-fedhub-toolbar' },
        this.prevButton,
        this.pageLabel,
        this.nextButton
      ),
      h(
        'div',
        { class: 'jp-fedhub-toolbar' },
        this.compareButton,
        this.clearButton,
        this.selectionLabel
      ),
      this.details,
      this.reproduction,
      this.comparison
    );
    this.renderSelection();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.stopPolling();
    this.disposeCharts(this.detailCharts);
    this.disposeCharts(this.compareCharts);
    super.dispose();
  }

  /** Reload the experiments list and the current page of runs. */
  async refresh(): Promise<void> {
    void this.loadSession();
    await this.loadExperiments();
  }

  /** The first time the panel is shown, load (no request while it stays closed). */
  private loadOnce(): void {
    if (!this.loadedOnce && this.isVisible) {
      this.loadedOnce = true;
      void this.refresh();
    }
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    this.loadOnce();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.loadOnce();
    this.resizeCharts();
  }

  protected onResize(msg: Widget.ResizeMessage): void {
    super.onResize(msg);
    this.resizeCharts();
  }

  // ------------------------------------------------------------ session

  private async loadSession(): Promise<void> {
    try {
      const session = await api.getSession();
      this.session = session;
      if (session.mlflow_ui_url) {
        this.mlflowLink.href = session.mlflow_ui_url;
        this.mlflowLink.hidden = false;
      } else {
        this.mlflowLink.hidden = true;
      }
      if (this.currentRun) {
        this.renderDetailsHeader();
      }
    } catch {
      // the status bar reports session errors; the panel still works without the link
    }
  }

  // ------------------------------------------------------------ experiments

  private async loadExperiments(): Promise<void> {
    const seq = ++this.experimentsSeq;
    this.setBusy(this.experimentsStatus, 'Loading experiments…');
    this.refreshButton.disabled = true;
    try {
      const experiments = await api.getAllExperiments();
      if (seq !== this.experimentsSeq) {
        return;
      }
      replace(this.experimentsStatus);
      replace(
        this.experimentSelect,
        ...experiments.map(e =>
          h('option', { value: e.experiment_id }, e.name || e.experiment_id)
        )
      );
      if (!experiments.length) {
        this.experimentId = null;
        this.share.setExperiment(null);
        this.experimentSelect.disabled = true;
        replace(
          this.experimentsStatus,
          h(
            'p',
            { class: 'jp-fedhub-muted' },
            'No experiments yet. Log a run from a notebook: ',
            h('code', {}, 'import mlflow; mlflow.log_metric("acc", 0.9)')
          )
        );
        this.clearRuns();
        return;
      }
      this.experimentSelect.disabled = false;
      const keep = experiments.some(e => e.experiment_id === this.experimentId);
      const id = keep ? this.experimentId! : this.defaultExperiment(experiments);
      this.experimentSelect.value = id;
      if (keep) {
        await this.loadRuns();
      } else {
        this.selectExperiment(id);
      }
    } catch (err) {
      if (seq === this.experimentsSeq) {
        showError(this.experimentsStatus, 'Cannot list experiments', err);
      }
    } finally {
      if (seq === this.experimentsSeq) {
        this.refreshButton.disabled = false;
      }
    }
  }

  /** The most recently updated experiment with runs; "Default" otherwise. */
  private defaultExperiment(experiments: api.IExperiment[]): string {
    const sorted = [...experiments].sort(
      (a, b) => (b.last_update_time ?? 0) - (a.last_update_time ?? 0)
    );
    return sorted[0].experiment_id;
  }

  private selectExperiment(id: string): void {
    if (!id) {
      return;
    }
    this.experimentId = id;
    this.share.setExperiment(id);
    this.sort = null;
    this.tokens = [null];
    void this.loadRuns();
  }

  // ------------------------------------------------------------ runs table

  private clearRuns(): void {
    this.page = null;
    this.tokens = [null];
    replace(this.runsTable);
    replace(this.runsStatus);
    replace(this.runsError);
    this.prevButton.disabled = true;
    this.nextButton.disabled = true;
    replace(this.pageLabel);
  }

  private async loadRuns(): Promise<void> {
    const experimentId = this.experimentId;
    if (!experimentId) {
      return;
    }
    const seq = ++this.runsSeq;
    const token = this.tokens[this.tokens.length - 1];
    this.runsTable.setAttribute('aria-busy', 'true');
    this.prevButton.disabled = true;
    this.nextButton.disabled = true;
    replace(this.runsError);
    this.setBusy(this.runsStatus, 'Loading runs…');
    try {
      const page = await api.getRuns(experimentId, {
        max_results: api.PAGE_SIZE,
        page_token: token,
        order_by: this.sort
          ? api.orderByTerm(this.sort.kind, this.sort.key, this.sort.descending)
          : null
      });
      if (seq !== this.runsSeq) {
        return;
      }
      this.page = page;
      this.renderRuns();
      const n = page.runs.length;
      const pageNo = this.tokens.length;
      replace(
        this.runsStatus,
        n
          ? `${n} run${n === 1 ? '' : 's'} on page ${pageNo}`
          : pageNo > 1
            ? 'No more runs.'
            : 'No runs in this experiment yet.'
      );
      replace(this.pageLabel, `Page ${pageNo}`);
      this.prevButton.disabled = this.tokens.length <= 1;
      this.nextButton.disabled = !page.next_page_token;
    } catch (err) {
      if (seq !== this.runsSeq) {
        return;
      }
      replace(this.runsStatus);
      showError(this.runsError, 'Cannot load runs', err);
      this.prevButton.disabled = this.tokens.length <= 1;
    } finally {
      if (seq === this.runsSeq) {
        this.runsTable.removeAttribute('aria-busy');
      }
    }
  }

  private nextPage(): void {
    const next = this.page?.next_page_token;
    if (next) {
      this.tokens.push(next);
      void this.loadRuns();
    }
  }

  private previousPage(): void {
    if (this.tokens.length > 1) {
      this.tokens.pop();
      void this.loadRuns();
    }
  }

  private columns(page: api.IRunsPage): IColumn[] {
    const cols: IColumn[] = [
      {
        kind: 'attributes',
        key: 'run_name',
        label: 'Run name',
        descFirst: false,
        cell: r => r.run_name || r.run_id
      },
      {
        kind: 'attributes',
        key: 'status',
        label: 'Status',
        descFirst: false,
        cell: r => r.status
      },
      {
        kind: 'attributes',
        key: 'start_time',
        label: 'Start time',
        descFirst: true,
        cell: r => formatTime(r.start_time)
      }
    ];
    for (const key of page.metric_keys) {
      cols.push({
        kind: 'metrics',
        key,
        label: key,
        descFirst: true,
        cell: r => formatValue(r.metrics[key])
      });
    }
    for (const key of page.param_keys) {
      cols.push({
        kind: 'params',
        key,
        label: key,
        descFirst: false,
        cell: r => formatValue(r.params[key])
      });
    }
    return cols;
  }

  private renderRuns(): void {
    const page = this.page;
    if (!page) {
      replace(this.runsTable);
      return;
    }
    const cols = this.columns(page);
    const nMetrics = page.metric_keys.length;
    const nParams = page.param_keys.length;

    // Two header rows: column groups (Metrics, Params), then the sortable columns.
    const groupRow = h(
      'tr',
      {},
      h('td', { colspan: 4 }),
      nMetrics > 0 &&
        h('th', { scope: 'colgroup', colspan: nMetrics, class: 'jp-fedhub-group' }, 'Metrics'),
      nParams > 0 &&
        h('th', { scope: 'colgroup', colspan: nParams, class: 'jp-fedhub-group' }, 'Params')
    );
    const headRow = h(
      'tr',
      {},
      h('th', { scope: 'col', class: 'jp-fedhub-check' }, h('span', { class: 'jp-fedhub-sr' }, 'Select'))
    );
    for (const col of cols) {
      const active =
        this.sort && this.sort.kind === col.kind && this.sort.key === col.key
          ? this.sort
          : null;
      const arrow = active ? (active.descending ? ' ▼' : ' ▲') : '';
      headRow.appendChild(
        h(
          'th',
          {
            scope: 'col',
            class: `jp-fedhub-col-${col.kind}`,
            'aria-sort': active
              ? active.descending
                ? 'descending'
                : 'ascending'
              : null,
            title: `Sort by ${col.kind === 'attributes' ? col.label : `${col.kind === 'metrics' ? 'metric' : 'param'} ${col.key}`}`
          },
          h(
            'button',
            {
              type: 'button',
              class: 'jp-fedhub-sort',
              onclick: () => this.sortBy(col)
            },
            col.label,
            arrow && h('span', { 'aria-hidden': 'true' }, arrow)
          )
        )
      );
    }

    const body = h('tbody');
    for (const run of page.runs) {
      const name = run.run_name || run.run_id;
      const checked = this.selected.has(run.run_id);
      const row = h('tr', {
        class:
          this.currentRun?.run_id === run.run_id ? 'jp-mod-selected' : null,
        'data-run-id': run.run_id
      });
      row.appendChild(
        h(
          'td',
          { class: 'jp-fedhub-check' },
          h('input', {
            type: 'checkbox',
            'aria-label': `Select ${name}`,
            checked,
            disabled: !checked && this.selected.size >= api.MAX_COMPARE,
            onchange: (e: Event) =>
              this.toggleSelected(run, (e.target as HTMLInputElement).checked)
          })
        )
      );
      cols.forEach((col, i) => {
        if (i === 0) {
          row.appendChild(
            h(
              'th',
              { scope: 'row' },
              h(
                'button',
                {
                  type: 'button',
                  class: 'jp-fedhub-linkbutton',
                  title: 'Show charts and details',
                  onclick: () => void this.showRun(run)
                },
                name
              ),
              run.reproducible &&
                h(
                  'span',
                  {
                    class: 'jp-fedhub-badge',
                    title: 'Reproducible: captured by fedhub'
                  },
                  h('span', { 'aria-hidden': 'true' }, '⟳'),
                  h('span', { class: 'jp-fedhub-sr' }, ' (reproducible)')
                )
            )
          );
        } else {
          const text = col.cell(run);
          row.appendChild(
            h(
              'td',
              {
                class: `jp-fedhub-col-${col.kind}${col.key === 'status' && col.kind === 'attributes' ? ` jp-fedhub-status-${run.status.toLowerCase()}` : ''}`,
                title: col.kind === 'metrics' ? String(run.metrics[col.key] ?? '') : null
              },
              text
            )
          );
        }
      });
      body.appendChild(row);
    }
    replace(this.runsTable, h('thead', {}, groupRow, headRow), body);
  }

  private sortBy(col: IColumn): void {
    const same =
      this.sort && this.sort.kind === col.kind && this.sort.key === col.key;
    this.sort = {
      kind: col.kind,
      key: col.key,
      descending: same ? !this.sort!.descending : col.descFirst
    };
    this.tokens = [null];
    void this.loadRuns();
  }

  // ------------------------------------------------------------ selection / compare

  private toggleSelected(run: api.IRun, on: boolean): void {
    if (on && this.selected.size < api.MAX_COMPARE) {
      this.selected.set(run.run_id, run);
    } else {
      this.selected.delete(run.run_id);
    }
    this.renderSelection();
    this.renderRuns();
  }

  private clearSelection(): void {
    this.selected.clear();
    this.renderSelection();
    this.renderRuns();
  }

  private renderSelection(): void {
    const n = this.selected.size;
    this.compareButton.disabled = n < 2;
    this.clearButton.disabled = n === 0;
    replace(
      this.selectionLabel,
      n === 0
        ? `Select 2–${api.MAX_COMPARE} runs to compare`
        : `${n} run${n === 1 ? '' : 's'} selected${n >= api.MAX_COMPARE ? ' (maximum)' : ''}`
    );
  }

  private async compare(): Promise<void> {
    const ids = [...this.selected.keys()];
    if (ids.length < 2) {
      return;
    }
    const seq = ++this.compareSeq;
    this.disposeCharts(this.compareCharts);
    this.comparison.hidden = false;
    const status = h('div', { class: 'jp-fedhub-message' });
    replace(
      this.comparison,
      h('h3', {}, `Comparison of ${ids.length} runs`),
      status
    );
    this.setBusy(status, 'Loading comparison…');
    this.compareButton.disabled = true;
    try {
      const result = await api.compareRuns(ids);
      if (seq !== this.compareSeq) {
        return;
      }
      this.compared = result;
      this.renderComparison(result);
    } catch (err) {
      if (seq === this.compareSeq) {
        showError(status, 'Cannot compare runs', err);
      }
    } finally {
      this.renderSelection();
    }
  }

  private renderComparison(result: api.IComparison): void {
    const chartHost = h('div', { class: 'jp-fedhub-charts' });
    const metricSelect = h(
      'select',
      {
        id: 'jp-fedhub-compare-metric',
        'aria-label': 'Metric to compare',
        onchange: () => void this.renderCompareChart(metricSelect.value, chartHost)
      },
      ...result.metric_keys.map(k => h('option', { value: k }, k))
    );
    const runs = result.runs;
    const differs = (values: (string | number | undefined)[]) =>
      new Set(values.map(v => String(v ?? ''))).size > 1;

    const head = h(
      'tr',
      {},
      h('th', { scope: 'col' }, 'Run'),
      h('th', { scope: 'col' }, 'Status'),
      ...result.metric_keys.map(k =>
        h('th', { scope: 'col', class: 'jp-fedhub-col-metrics' }, k)
      ),
      ...result.param_keys.map(k =>
        h(
          'th',
          {
            scope: 'col',
            class:
              'jp-fedhub-col-params' +
              (differs(runs.map(r => r.params[k])) ? ' jp-fedhub-differs' : ''),
            title: differs(runs.map(r => r.params[k]))
              ? `param ${k} differs between runs`
              : `param ${k}`
          },
          k
        )
      )
    );
    const body = h(
      'tbody',
      {},
      ...runs.map((r, i) =>
        h(
          'tr',
          {},
          h(
            'th',
            { scope: 'row' },
            h('span', {
              class: 'jp-fedhub-swatch',
              style: `background:${seriesColor(i)}`,
              'aria-hidden': 'true'
            }),
            r.run_name || r.run_id
          ),
          h('td', {}, r.status),
          ...result.metric_keys.map(k =>
            h('td', { title: String(r.metrics[k] ?? '') }, formatValue(r.metrics[k]))
          ),
          ...result.param_keys.map(k =>
            h(
              'td',
              {
                class: differs(runs.map(x => x.params[k]))
                  ? 'jp-fedhub-differs'
                  : null
              },
              formatValue(r.params[k])
            )
          )
        )
      )
    );
    replace(
      this.comparison,
      h(
        'div',
        { class: 'jp-fedhub-header' },
        h('h3', {}, `Comparison of ${runs.length} runs`),
        h(
          'button',
          {
            class: 'jp-fedhub-button',
            type: 'button',
            onclick: () => this.closeComparison()
          },
          'Close comparison'
        )
      ),
      result.metric_keys.length
        ? h(
            'div',
            { class: 'jp-fedhub-toolbar' },
            h('label', { for: 'jp-fedhub-compare-metric' }, 'Metric'),
            metricSelect
          )
        : h('p', { class: 'jp-fedhub-muted' }, 'These runs logged no metrics.'),
      chartHost,
      h(
        'div',
        { class: 'jp-fedhub-table-scroll' },
        h(
          'table',
          { class: 'jp-fedhub-table', 'aria-label': 'Comparison' },
          h('thead', {}, head),
          body
        )
      )
    );
    if (result.metric_keys.length) {
      void this.renderCompareChart(result.metric_keys[0], chartHost);
    }
  }

  private closeComparison(): void {
    ++this.compareSeq;
    this.disposeCharts(this.compareCharts);
    this.compared = null;
    this.comparison.hidden = true;
    replace(this.comparison);
  }

  private async renderCompareChart(key: string, host: HTMLElement): Promise<void> {
    const result = this.compared;
    if (!result) {
      return;
    }
    const seq = ++this.compareChartSeq;
    this.disposeCharts(this.compareCharts);
    const status = h('div', { class: 'jp-fedhub-message' });
    replace(host, status);
    this.setBusy(status, `Loading ${key} for ${result.runs.length} runs…`);
    const settled = await Promise.allSettled(
      result.runs.map(r => api.getMetricHistory(r.run_id, key))
    );
    if (seq !== this.compareChartSeq || this.compared !== result) {
      return;
    }
    const inputs = result.runs.map((r, i) => {
      const s = settled[i];
      return {
        label: r.run_name || r.run_id,
        history: s.status === 'fulfilled' ? s.value.history : []
      };
    });
    const failed = settled.filter(s => s.status === 'rejected').length;
    const chart = new MetricChart(key, inputs, this.chartWidth());
    this.compareCharts.push(chart);
    replace(
      host,
      chart.node,
      failed
        ? h(
            'p',
            { class: 'jp-fedhub-muted' },
            `${failed} run${failed === 1 ? '' : 's'} have no ${key} history.`
          )
        : null
    );
  }

  // ------------------------------------------------------------ run details

  private async showRun(run: api.IRun): Promise<void> {
    this.currentRun = run;
    const seq = ++this.detailsSeq;
    for (const row of this.runsTable.querySelectorAll('tbody tr')) {
      row.classList.toggle(
        'jp-mod-selected',
        (row as HTMLElement).dataset.runId === run.run_id
      );
    }
    this.disposeCharts(this.detailCharts);
    this.details.hidden = false;
    this.detailsHeader = h('div');
    this.detailsCharts = h('div', { class: 'jp-fedhub-charts' });
    replace(this.details, this.detailsHeader, this.detailsCharts);
    this.renderDetailsHeader();
    this.details.scrollIntoView?.({ block: 'nearest' });

    const keys = Object.keys(run.metrics).sort();
    if (!keys.length) {
      replace(
        this.detailsCharts,
        h('p', { class: 'jp-fedhub-muted' }, 'This run logged no metrics.')
      );
      return;
    }
    const shown = keys.slice(0, MAX_CHARTS);
    const status = h('div', { class: 'jp-fedhub-message' });
    replace(this.detailsCharts, status);
    this.setBusy(status, 'Loading metric history…');
    const settled = await Promise.allSettled(
      shown.map(k => api.getMetricHistory(run.run_id, k))
    );
    if (seq !== this.detailsSeq) {
      return;
    }
    replace(this.detailsCharts);
    const width = this.chartWidth();
    settled.forEach((s, i) => {
      if (s.status === 'fulfilled') {
        const chart = new MetricChart(
          shown[i],
          [{ label: shown[i], history: s.value.history }],
          width
        );
        this.detailCharts.push(chart);
        this.detailsCharts.appendChild(chart.node);
      } else {
        const box = h('div', { class: 'jp-fedhub-message' });
        showError(box, `Cannot load ${shown[i]}`, s.reason);
        this.detailsCharts.appendChild(box);
      }
    });
    if (keys.length > shown.length) {
      this.detailsCharts.appendChild(
        h(
          'p',
          { class: 'jp-fedhub-muted' },
          `Showing ${shown.length} of ${keys.length} metrics.`
        )
      );
    }
  }

  private renderDetailsHeader(): void {
    const run = this.currentRun;
    if (!run) {
      return;
    }
    const name = run.run_name || run.run_id;
    const ui = this.session?.mlflow_ui_url;
    const params = Object.entries(run.params);
    const busy = this.repro !== null && this.repro.status === 'running';
    replace(
      this.detailsHeader,
      h(
        'div',
        { class: 'jp-fedhub-header' },
        h('h3', {}, name),
        h(
          'button',
          {
            class: 'jp-fedhub-button',
            type: 'button',
            onclick: () => this.closeDetails()
          },
          'Close details'
        )
      ),
      h(
        'p',
        { class: 'jp-fedhub-muted' },
        `${run.status} · started ${formatTime(run.start_time) || '?'} · `,
        h('code', {}, run.run_id)
      ),
      ui &&
        h(
          'p',
          {},
          h(
            'a',
            {
              class: 'jp-fedhub-link',
              href: `${ui.replace(/\/$/, '')}/#/experiments/${encodeURIComponent(run.experiment_id)}/runs/${encodeURIComponent(run.run_id)}`,
              target: '_blank',
              rel: 'noopener noreferrer'
            },
            'Open run in MLflow UI'
          )
        ),
      params.length > 0 &&
        h(
          'details',
          {},
          h('summary', {}, `Params (${params.length})`),
          h(
            'dl',
            { class: 'jp-fedhub-params' },
            ...params.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])
          )
        ),
      run.reproducible
        ? h(
            'div',
            { class: 'jp-fedhub-toolbar' },
            h(
              'button',
              {
                class: 'jp-fedhub-button jp-mod-accept',
                type: 'button',
                disabled: busy,
                title: 'Re-execute this run in a fresh kernel and compare its metrics',
                onclick: () => void this.reproduce(run)
              },
              'Reproduce'
            )
          )
        : h(
            'p',
            { class: 'jp-fedhub-muted' },
            'Not reproducible: this run has no fedhub capture (start it with fedhub.track()).'
          )
    );
  }

  private closeDetails(): void {
    ++this.detailsSeq;
    this.currentRun = null;
    this.disposeCharts(this.detailCharts);
    this.details.hidden = true;
    replace(this.details);
    for (const row of this.runsTable.querySelectorAll('tbody tr.jp-mod-selected')) {
      row.classList.remove('jp-mod-selected');
    }
  }

  // ------------------------------------------------------------ reproduce

  private async reproduce(run: api.IRun): Promise<void> {
    this.stopPolling();
    const name = run.run_name || run.run_id;
    this.repro = {
      id: '',
      run_id: run.run_id,
      status: 'running',
      child_run_id: null,
      identical: null,
      comparison: [],
      message: null,
      log_tail: null
    };
    this.reproName = name;
    this.renderDetailsHeader();
    this.reproduction.hidden = false;
    this.renderReproduction(null);
    try {
      const started = await api.startReproduction(run.run_id);
      this.repro = { ...this.repro, id: started.id, status: started.status };
      this.renderReproduction(null);
      this.poll(started.id, 0);
    } catch (err) {
      this.repro = null;
      this.renderReproduction(err);
      this.renderDetailsHeader();
    }
  }

  private poll(id: string, errors: number): void {
    this.pollTimer = window.setTimeout(async () => {
      this.pollTimer = null;
      try {
        const state = await api.getReproduction(id);
        if (this.isDisposed || !this.repro || this.repro.id !== id) {
          return;
        }
        this.repro = state;
        this.renderReproduction(null);
        if (state.status === 'running') {
          this.poll(id, 0);
        } else {
          this.renderDetailsHeader();
          if (state.child_run_id) {
            void this.loadRuns(); // the reproduced run is a new run: show it
          }
        }
      } catch (err) {
        if (this.isDisposed || !this.repro || this.repro.id !== id) {
          return;
        }
        // a 4xx is final (e.g. the server forgot the reproduction); network blips are retried
        const status = (err as api.ApiError).status ?? 0;
        if (status >= 400 && status < 500 || errors >= 4) {
          this.repro = null;
          this.renderReproduction(err);
          this.renderDetailsHeader();
        } else {
          this.poll(id, errors + 1);
        }
      }
    }, POLL_MS);
  }

  private stopPolling(): void {
    if (this.pollTimer !== null) {
      window.clearTimeout(this.pollTimer);
      this.pollTimer = null;
    }
  }

  private renderReproduction(error: unknown): void {
    const title = h('h3', {}, `Reproduction of ${this.reproName}`);
    const r = this.repro;
    if (!r) {
      const box = h('div', { class: 'jp-fedhub-message' });
      showError(box, 'Reproduction failed', error);
      replace(this.reproduction, title, box);
      return;
    }
    const log =
      r.log_tail &&
      h(
        'details',
        { open: r.status === 'failed' ? true : null },
        h('summary', {}, 'Log'),
        h('pre', { class: 'jp-fedhub-log' }, r.log_tail)
      );
    if (r.status === 'running') {
      replace(
        this.reproduction,
        title,
        h(
          'p',
          { class: 'jp-fedhub-message', role: 'status', 'aria-live': 'polite' },
          h('span', { class: 'jp-fedhub-spinner', 'aria-hidden': 'true' }),
          'Status: running — re-executing in a fresh kernel…'
        ),
        log
      );
      return;
    }
    if (r.status === 'failed') {
      replace(
        this.reproduction,
        title,
        h(
          'p',
          { class: 'jp-fedhub-message jp-fedhub-error', role: 'alert' },
          `Status: failed. ${r.message ?? ''}`
        ),
        log
      );
      return;
    }
    const identical =
      r.identical ?? (r.comparison.length > 0 && r.comparison.every(c => c.match));
    const nDiff = r.comparison.filter(c => !c.match).length;
    replace(
      this.reproduction,
      title,
      h('p', { role: 'status' }, 'Status: done'),
      h(
        'p',
        {
          class: `jp-fedhub-verdict ${identical ? 'jp-fedhub-identical' : 'jp-fedhub-differs'}`
        },
        'Verdict: ',
        h('strong', {}, identical ? 'identical' : 'differs'),
        identical
          ? ' — every metric matches the original run.'
          : ` — ${nDiff} of ${r.comparison.length} metric${r.comparison.length === 1 ? '' : 's'} differ.`
      ),
      r.message && h('p', { class: 'jp-fedhub-muted' }, r.message),
      r.child_run_id &&
        h(
          'p',
          { class: 'jp-fedhub-muted' },
          'Reproduced run: ',
          h('code', {}, r.child_run_id)
        ),
      h(
        'div',
        { class: 'jp-fedhub-table-scroll' },
        h(
          'table',
          { class: 'jp-fedhub-table', 'aria-label': 'Reproduction comparison' },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              h('th', { scope: 'col' }, 'Metric'),
              h('th', { scope: 'col' }, 'Original'),
              h('th', { scope: 'col' }, 'Reproduced'),
              h('th', { scope: 'col' }, 'Match')
            )
          ),
          h(
            'tbody',
            {},
            ...r.comparison.map(c =>
              h(
                'tr',
                { class: c.match ? null : 'jp-fedhub-differs' },
                h('th', { scope: 'row' }, c.metric),
                h('td', {}, c.original === null ? '—' : String(c.original)),
                h('td', {}, c.reproduced === null ? '—' : String(c.reproduced)),
                h('td', {}, c.match ? '✓ identical' : '✗ differs')
              )
            )
          )
        )
      ),
      log
    );
  }

  // ------------------------------------------------------------ helpers

  private chartWidth(): number {
    const w = this.node.clientWidth - 32;
    return w > 0 ? w : 300;
  }

  private resizeCharts(): void {
    if (!this.isVisible) {
      return;
    }
    const w = this.chartWidth();
    for (const c of [...this.detailCharts, ...this.compareCharts]) {
      c.resize(w);
    }
  }

  private disposeCharts(charts: MetricChart[]): void {
    for (const c of charts.splice(0)) {
      c.dispose();
    }
  }

  private setBusy(el: HTMLElement, text: string): void {
    replace(
      el,
      h(
        'span',
        { class: 'jp-fedhub-loading' },
        h('span', { class: 'jp-fedhub-spinner', 'aria-hidden': 'true' }),
        text
      )
    );
  }

  private readonly share = new ShareSection();
  private readonly mlflowLink: HTMLAnchorElement;
  private readonly experimentSelect: HTMLSelectElement;
  private readonly refreshButton: HTMLButtonElement;
  private readonly experimentsStatus: HTMLElement;
  private readonly runsStatus: HTMLElement;
  private readonly runsError: HTMLElement;
  private readonly runsTable: HTMLTableElement;
  private readonly prevButton: HTMLButtonElement;
  private readonly nextButton: HTMLButtonElement;
  private readonly pageLabel: HTMLElement;
  private readonly selectionLabel: HTMLElement;
  private readonly compareButton: HTMLButtonElement;
  private readonly clearButton: HTMLButtonElement;
  private readonly details: HTMLElement;
  private readonly reproduction: HTMLElement;
  private readonly comparison: HTMLElement;
  private detailsHeader: HTMLElement = h('div');
  private detailsCharts: HTMLElement = h('div');

  private loadedOnce = false;
  private session: api.ISessionInfo | null = null;
  private experimentId: string | null = null;
  private page: api.IRunsPage | null = null;
  /** page tokens of the pages walked so far; the last one is the current page's */
  private tokens: (string | null)[] = [null];
  private sort: ISort | null = null;
  private readonly selected = new Map<string, api.IRun>();
  private currentRun: api.IRun | null = null;
  private compared: api.IComparison | null = null;
  private repro: api.IReproduction | null = null;
  private reproName = '';
  private pollTimer: number | null = null;
  private readonly detailCharts: MetricChart[] = [];
  private readonly compareCharts: MetricChart[] = [];
  private experimentsSeq = 0;
  private runsSeq = 0;
  private detailsSeq = 0;
  private compareSeq = 0;
  private compareChartSeq = 0;
}
