/**
 * Metric charts with uPlot: one small canvas line chart per metric, or one
 * metric overlaid across runs.
 */
import uPlot from 'uplot';

import { IMetricPoint } from './api';
import { h } from './dom';

const COLORS = [
  '#1f77b4',
  '#ff7f0e',
  '#2ca02c',
  '#d62728',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#7f7f7f',
  '#bcbd22',
  '#17becf'
];

export function seriesColor(i: number): string {
  if (i < COLORS.length) {
    return COLORS[i];
  }
  return `hsl(${(i * 137.5) % 360}, 60%, 45%)`;
}

export interface ISeriesInput {
  label: string;
  history: IMetricPoint[];
}

/**
 * Points in logging order. MLflow logs step 0 when no step is given: if the
 * steps of any series are not distinct, every series is plotted by index.
 */
function prepare(inputs: ISeriesInput[]): {
  xLabel: string;
  tables: uPlot.AlignedData[];
} {
  const sorted = inputs.map(s =>
    [...s.history].sort((a, b) => a.step - b.step || a.timestamp - b.timestamp)
  );
  const byStep = sorted.every(
    pts => new Set(pts.map(p => p.step)).size === pts.length
  );
  const tables = sorted.map(pts => {
    const xs = pts.map((p, i) => (byStep ? p.step : i));
    const ys = pts.map(p =>
      p.value === null || !isFinite(p.value) ? null : p.value
    );
    return [xs, ys] as unknown as uPlot.AlignedData;
  });
  return { xLabel: byStep ? 'step' : 'index', tables };
}

/** A uPlot line chart in a <figure>, resized with its panel. */
export class MetricChart {
  readonly node: HTMLElement;
  private plot: uPlot | null = null;
  private readonly plotHost: HTMLDivElement;

  constructor(title: string, inputs: ISeriesInput[], width: number) {
    this.plotHost = h('div', { class: 'jp-fedhub-chart-plot' });
    this.node = h(
      'figure',
      { class: 'jp-fedhub-chart', 'aria-label': `${title} chart` },
      h('figcaption', {}, title),
      this.plotHost
    );
    const points = inputs.reduce((n, s) => n + s.history.length, 0);
    if (points === 0) {
      this.plotHost.appendChild(
        h('p', { class: 'jp-fedhub-muted' }, 'No values logged.')
      );
      return;
    }
    const { xLabel, tables } = prepare(inputs);
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const opts: uPlot.Options = {
      width: Math.max(200, width),
      height: 180,
      scales: { x: { time: false } },
      legend: { show: true, live: true },
      cursor: { drag: { x: true, y: false } },
      axes: [
        { label: xLabel, labelSize: 20, stroke: 'var(--jp-ui-font-color1)' },
        { stroke: 'var(--jp-ui-font-color1)', size: 60 }
      ],
      series: [
        { label: xLabel },
        ...inputs.map((s, i) => ({
          label: s.label,
          stroke: seriesColor(i),
          width: 1.5,
          spanGaps: true,
          points: { show: (tables[i][0] as number[]).length <= 1 ? true : undefined }
        }))
      ]
    };
    this.plot = new uPlot(opts, data, this.plotHost);
  }

  resize(width: number): void {
    if (this.plot && width > 0) {
      this.plot.setSize({ width: Math.max(200, width), height: 180 });
    }
  }

  dispose(): void {
    if (this.plot) {
      this.plot.destroy();
      this.plot = null;
    }
    this.node.remove();
  }
}
