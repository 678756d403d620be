/** A few DOM helpers: the panels are plain Lumino widgets filled with DOM. */

export type Child = Node | string | number | null | undefined | false;

export interface IAttrs {
  [key: string]:
    | string
    | number
    | boolean
    | null
    | undefined
    | ((event: any) => void);
}

const PROPS = new Set(['checked', 'disabled', 'value', 'selected', 'hidden']);

/** Create an element: `h('button', {class: 'x', onclick: f}, 'Label')`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: IAttrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) {
      continue;
    }
    if (typeof value === 'function') {
      el.addEventListener(key.replace(/^on/, ''), value);
    } else if (key === 'class') {
      el.className = String(value);
    } else if (PROPS.has(key)) {
      (el as any)[key] = value;
    } else if (value === false) {
      continue;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, ...children);
  return el;
}

export function append(el: Element, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) {
      continue;
    }
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace all children of `el`. */
export function replace(el: Element, ...children: Child[]): void {
  el.textContent = '';
  append(el, ...children);
}

/** `2026-11-24 06:45:03` in local time, from milliseconds since the epoch. */
export function formatTime(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !isFinite(ms)) {
    return '';
  }
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return (
    `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`
  );
}

/** A metric value for a table cell: short but not misleading. */
export function formatValue(v: number | string | null | undefined): string {
  if (v === null || v === undefined) {
    return '';
  }
  if (typeof v === 'string') {
    return v;
  }
  if (Number.isInteger(v) || !isFinite(v)) {
    return String(v);
  }
  const abs = Math.abs(v);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e6)) {
    return v.toExponential(4);
  }
  return String(Number(v.toPrecision(6)));
}

/** Bytes as GB/MB, e.g. `15.0 GB`. */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !isFinite(n)) {
    return '';
  }
  const units = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** CPU counts: `7` or `7.5`. */
export function formatCount(n: number | null | undefined): string {
  if (n === null || n === undefined || !isFinite(n)) {
    return '';
  }
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}
