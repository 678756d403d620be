/**
 * The Deploy panel: pick a model (a run's logged model, a registered model or an ONNX
 * file), a name and a target, deploy; follow each step; then the endpoint, a copyable
 * tritonclient snippet and a test inference. Deployments are listed with undeploy and
 * roll back.
 */
import { LabIcon } from '@jupyterlab/ui-components';

import * as api from './api';
import { errorMessage } from './api';
import * as deployApi from './deployApi';
import { append, formatTime, h, replace } from './dom';
import { LivePanel, WAIT_S, fieldRow, showError, spinner } from './panel';

export const deployIcon = new LabIcon({
  name: 'fedhub:deploy',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<path class="jp-icon3" fill="#616161" d="M12 2c3 2 5 5.5 5 9.5V15l2 3v2h-4.5l-.5 2h-4l-.5-2H5v-2l2-3v-3.5C7 7.5 9 4 12 2zm0 6a2 2 0 1 0 0 4 2 2 0 0 0 0-4z"/>' +
    '</svg>'
});

/** A deployment name the hub accepts, from a model's name: `digits-clf`. */
export function suggestName(model: string): string {
  const last = model.replace(/\.onnx$/, '').split(/[/:]/).filter(Boolean);
  const base = (last.length >= 2 && /^\d+$/.test(last[last.length - 1])
    ? last[last.length - 2]
    : last[last.length - 1]) ?? 'model';
  const name = base.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40);
  return name.replace(/-+$/, '') || 'model';
}

const STEP_ICONS: { [status: string]: string } = {
  pending: '○',
  running: '◔',
  done: '✓',
  failed: '✗'
};

export class DeployPanel extends LivePanel {
  constructor() {
    super('fedhub-deploy', 'Deploy', 'jp-fedhub-deploy');
    this.title.icon = deployIcon;
    this.refreshButton.title = 'Reload models and deployments';

    this.modelSelect = h('select', {
      id: 'jp-fedhub-dp-model-select',
      'aria-label': 'Model',
      onchange: () => this.pickModel(this.modelSelect.value)
    });
    this.modelInput = h('input', {
      id: 'jp-fedhub-dp-model',
      type: 'text',
      placeholder: 'runs:/RUN_ID/model, models:/name/1 or path/to/model.onnx',
      'aria-label': 'Model URI or ONNX path',
      oninput: () => this.updateDeploy()
    });
    this.nameInput = h('input', {
      id: 'jp-fedhub-dp-name',
      type: 'text',
      placeholder: 'digits-clf',
      'aria-label': 'Deployment name',
      oninput: () => {
        this.nameEdited = true;
        this.updateDeploy();
      }
    });
    this.targetSelect = h('select', {
      id: 'jp-fedhub-dp-target',
      'aria-label': 'Target',
      onchange: () => {
        this.edgeRow.hidden = this.targetSelect.value !== 'edge';
        this.updateDeploy();
      }
    });
    this.edgeInput = h('input', {
      id: 'jp-fedhub-dp-edge',
      type: 'text',
      placeholder: 'lab-cameras',
      'aria-label': 'Edge device group',
      oninput: () => this.updateDeploy()
    });
    this.edgeRow = h(
      'div',
      { class: 'jp-fedhub-field', hidden: true },
      h('label', { for: 'jp-fedhub-dp-edge' }, 'Edge group'),
      this.edgeInput
    );
    this.deployButton = h(
      'button',
      { class: 'jp-fedhub-button jp-mod-accept', type: 'button', onclick: () => void this.deploy() },
      'Deploy'
    );
    this.formStatus = h('div', { class: 'jp-fedhub-message', role: 'status', 'aria-live': 'polite' });
    this.current = h('section', { class: 'jp-fedhub-section', 'aria-label': 'Deployment', hidden: true });
    this.listStatus = h('div', { class: 'jp-fedhub-message' });
    this.table = h('table', { class: 'jp-fedhub-table', 'aria-label': 'Deployments' });

    const row = fieldRow;
    append(
      this.node,
      this.header,
      h(
        'form',
        {
          class: 'jp-fedhub-form',
          'aria-label': 'Deploy a model',
          onsubmit: (e: Event) => {
            e.preventDefault();
            void this.deploy();
          }
        },
        row('Model', 'jp-fedhub-dp-model-select', this.modelSelect),
        row('URI or path', 'jp-fedhub-dp-model', this.modelInput),
        row('Name', 'jp-fedhub-dp-name', this.nameInput),
        row('Target', 'jp-fedhub-dp-target', this.targetSelect),
        this.edgeRow,
        h('div', { class: 'jp-fedhub-toolbar' }, this.deployButton)
      ),
      this.formStatus,
      this.current,
      h(
        'section',
        { class: 'jp-fedhub-section', 'aria-label': 'Your deployments' },
        h('h3', {}, 'Deployments'),
        this.listStatus,
        h('div', { class: 'jp-fedhub-table-scroll' }, this.table)
      )
    );
    this.renderTargets([]);
    this.updateDeploy();
  }

  protected async load(): Promise<void> {
    await Promise.all([this.loadModels(), this.loadTargets(), this.loadDeployments()]);
  }

  // ------------------------------------------------------------ form

  private async loadModels(): Promise<void> {
    replace(this.modelSelect, h('option', { value: '' }, 'Loading models…'));
    try {
      const c = await deployApi.getModelChoices();
      const groups: HTMLElement[] = [];
      if (c.logged_models.length) {
        groups.push(
          h(
            'optgroup',
            { label: 'Runs with logged models' },
            ...c.logged_models.map(m =>
              h(
                'option',
                { value: m.uri },
                `${m.run_name || m.run_id.slice(0, 8)} / ${m.name}` + (m.experiment ? ` (${m.experiment})` : '')
              )
            )
          )
        );
      }
      if (c.registered_models.length) {
        groups.push(
          h(
            'optgroup',
            { label: 'Registered models' },
            ...c.registered_models.map(m => h('option', { value: m.uri }, `${m.name} v${m.version}`))
          )
        );
      }
      if (c.onnx_files.length) {
        groups.push(
          h(
            'optgroup',
            { label: 'ONNX files in your workspace' },
            ...c.onnx_files.map(f => h('option', { value: f.path }, f.path))
          )
        );
      }
      const none = !groups.length;
      replace(
        this.modelSelect,
        h('option', { value: '' }, none ? 'No models yet: log one with mlflow.<flavor>.log_model' : 'Pick a model…'),
        ...groups
      );
      if (this.modelInput.value && [...this.modelSelect.options].some(o => o.value === this.modelInput.value)) {
        this.modelSelect.value = this.modelInput.value;
      }
    } catch (err) {
      replace(this.modelSelect, h('option', { value: '' }, 'Cannot list models'));
      showError(this.formStatus, 'Cannot list models', err);
    }
  }

  private pickModel(uri: string): void {
    if (!uri) {
      return;
    }
    this.modelInput.value = uri;
    if (!this.nameEdited || !this.nameInput.value) {
      this.nameInput.value = suggestName(uri);
    }
    this.updateDeploy();
  }

  private async loadTargets(): Promise<void> {
    try {
      const inventory = await api.getSites();
      this.renderTargets(inventory.sites.filter(s => s.kind === 'kubernetes').map(s => s.name));
    } catch {
      this.renderTargets([]);
    }
  }

  private renderTargets(kubernetesSites: string[]): void {
    const keep = this.targetSelect.value || 'embedded';
    replace(
      this.targetSelect,
      h('option', { value: 'embedded' }, "This hub's inference server"),
      ...kubernetesSites.map(s => h('option', { value: `site:${s}` }, `Triton on ${s} (Kubernetes)`)),
      h('option', { value: 'edge' }, 'Edge devices (a group)…')
    );
    this.targetSelect.value = [...this.targetSelect.options].some(o => o.value === keep) ? keep : 'embedded';
    this.edgeRow.hidden = this.targetSelect.value !== 'edge';
  }

  private target(): string {
    const t = this.targetSelect.value;
    return t === 'edge' ? `edge:${this.edgeInput.value.trim()}` : t;
  }

  private updateDeploy(): void {
    const ready =
      !!this.modelInput.value.trim() &&
      !!this.nameInput.value.trim() &&
      (this.targetSelect.value !== 'edge' || !!this.edgeInput.value.trim());
    this.deployButton.disabled = this.busy || !ready;
  }

  private async deploy(): Promise<void> {
    this.busy = true;
    this.updateDeploy();
    replace(this.formStatus, spinner('Deploying…'));
    try {
      const d = await deployApi.deploy({
        model: this.modelInput.value.trim(),
        name: this.nameInput.value.trim(),
        target: this.target()
      });
      replace(this.formStatus, `Deployment ${d.name} started (version ${d.pending_version ?? ''}).`);
      void this.follow(d.id, d);
    } catch (err) {
      showError(this.formStatus, 'Cannot deploy', err);
    } finally {
      this.busy = false;
      this.updateDeploy();
    }
  }

  // ------------------------------------------------------------ one deployment, live

  private async follow(id: string, first?: deployApi.IDeployment): Promise<void> {
    const seq = this.newFollow();
    this.deployment = first ?? null;
    this.snippet = null;
    this.inference = null;
    this.inferError = null;
    this.current.hidden = false;
    if (first) {
      this.render(null);
    } else {
      replace(this.current, spinner('Loading deployment…'));
    }
    let after = 0;
    const step = async (): Promise<boolean> => {
      const d = await deployApi.getDeployment(id);
      if (!this.following(seq)) {
        return false;
      }
      this.deployment = d;
      const active = deployApi.ACTIVE_STATUSES.includes(d.status);
      if (!active && d.kind === 'embedded' && d.status === 'ready') {
        this.snippet = await deployApi.getSnippet(id).catch(() => null);
      }
      if (!this.following(seq)) {
        return false;
      }
      this.render(null);
      if (!active) {
        void this.loadDeployments();
        return false;
      }
      const ev = await deployApi.deploymentEvents(id, after, WAIT_S);
      after = Math.max(after, ev.last ?? 0);
      return true;
    };
    await this.followLoop(seq, step, err => {
      if ((err as { status?: number }).status === 404) {
        this.deployment = null; // undeployed elsewhere
        this.current.hidden = true;
        void this.loadDeployments();
      } else {
        this.render(err);
      }
    });
  }

  private render(error: unknown): void {
    const d = this.deployment;
    if (!d) {
      replace(this.current, h('p', { class: 'jp-fedhub-error', role: 'alert' }, `Cannot load: ${errorMessage(error)}`));
      return;
    }
    const active = deployApi.ACTIVE_STATUSES.includes(d.status);
    const steps = h(
      'ol',
      { class: 'jp-fedhub-steps', 'aria-label': 'Deployment steps' },
      ...(d.steps ?? []).map(s =>
        h(
          'li',
          { class: `jp-fedhub-step jp-fedhub-step-${s.status}` },
          h('span', { class: 'jp-fedhub-step-icon', 'aria-hidden': 'true' }, STEP_ICONS[s.status] ?? '·'),
          h('span', { class: 'jp-fedhub-step-name' }, s.name),
          ` — ${s.status}`,
          s.message && h('span', { class: 'jp-fedhub-muted' }, `: ${s.message}`)
        )
      )
    );
    const parts: (HTMLElement | null | false)[] = [
      h('h3', {}, `${d.name} → ${d.target}`),
      h(
        'p',
        { role: 'status', 'aria-live': 'polite', class: `jp-fedhub-status-${d.status}` },
        active && h('span', { class: 'jp-fedhub-spinner', 'aria-hidden': 'true' }),
        `Status: ${d.status}` + (d.current_version ? ` · serving version ${d.current_version}` : '')
      ),
      steps,
      !!d.error && h('p', { class: 'jp-fedhub-error', role: 'alert' }, d.error),
      error !== null && h('p', { class: 'jp-fedhub-error', role: 'alert' }, errorMessage(error))
    ];
    const ep = d.endpoint ?? {};
    if (!active && d.current_version && Object.keys(ep).length) {
      parts.push(
        h(
          'dl',
          { class: 'jp-fedhub-params', 'aria-label': 'Endpoint' },
          ...Object.entries(ep)
            .filter(([, v]) => v)
            .flatMap(([k, v]) => [h('dt', {}, k.replace(/_/g, ' ')), h('dd', {}, h('code', {}, String(v)))])
        )
      );
    }
    const code = this.snippet && (this.snippet.http || this.snippet.grpc);
    if (code) {
      const copy = h(
        'button',
        {
          class: 'jp-fedhub-button',
          type: 'button',
          'aria-label': 'Copy snippet',
          onclick: () => void this.copy(code, copy)
        },
        'Copy'
      );
      parts.push(
        h(
          'div',
          { class: 'jp-fedhub-snippet' },
          h('div', { class: 'jp-fedhub-toolbar' }, h('strong', {}, 'tritonclient snippet'), copy),
          h('pre', { class: 'jp-fedhub-log', 'aria-label': 'tritonclient snippet' }, code),
          this.snippet?.note && h('p', { class: 'jp-fedhub-muted' }, this.snippet.note)
        )
      );
    }
    if (d.kind === 'embedded' && d.status === 'ready') {
      parts.push(
        h(
          'div',
          { class: 'jp-fedhub-toolbar' },
          h(
            'button',
            { class: 'jp-fedhub-button jp-mod-accept', type: 'button', onclick: () => void this.testInference(d.id) },
            'Test inference'
          )
        )
      );
    }
    if (this.inference) {
      const r = this.inference;
      parts.push(
        h(
          'div',
          { class: 'jp-fedhub-inference', 'aria-label': 'Inference output', role: 'region' },
          h('p', { class: 'jp-fedhub-muted' }, `${r.model_name} v${r.model_version} answered in ${r.ms} ms`),
          h(
            'pre',
            { class: 'jp-fedhub-log' },
            r.outputs
              .map(o => `${o.name} ${o.datatype} [${o.shape.join(', ')}]: ${JSON.stringify(o.data).slice(0, 400)}`)
              .join('\n')
          )
        )
      );
    }
    if (this.inferError) {
      parts.push(h('p', { class: 'jp-fedhub-error', role: 'alert' }, `Test inference failed: ${this.inferError}`));
    }
    replace(this.current, ...parts);
  }

  private async copy(text: string, button: HTMLButtonElement): Promise<void> {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = 'Copied';
    } catch {
      // no clipboard permission (http, old browsers): select the text for Ctrl+C instead
      const pre = button.closest('.jp-fedhub-snippet')?.querySelector('pre');
      if (pre) {
        const range = document.createRange();
        range.selectNodeContents(pre);
        window.getSelection()?.removeAllRanges();
        window.getSelection()?.addRange(range);
      }
      button.textContent = 'Selected: press Ctrl+C';
    }
    window.setTimeout(() => (button.textContent = 'Copy'), 2000);
  }

  private async testInference(id: string): Promise<void> {
    this.inferError = null;
    this.inference = null;
    this.render(null);
    this.current.appendChild(spinner('Sending a sample input…'));
    try {
      this.inference = await deployApi.testInference(id);
    } catch (err) {
      this.inferError = errorMessage(err);
    }
    if (this.deployment?.id === id) {
      this.render(null);
    }
  }

  // ------------------------------------------------------------ list

  private async loadDeployments(): Promise<void> {
    try {
      const list = await deployApi.listDeployments();
      replace(this.listStatus);
      if (!list.length) {
        replace(this.table);
        replace(this.listStatus, h('p', { class: 'jp-fedhub-muted' }, 'No deployments yet.'));
        return;
      }
      replace(
        this.table,
        h(
          'thead',
          {},
          h('tr', {}, ...['Name', 'Target', 'Status', 'Version', 'Updated', 'Actions'].map(t => h('th', { scope: 'col' }, t)))
        ),
        h(
          'tbody',
          {},
          ...list.map(d => {
            const busy = deployApi.ACTIVE_STATUSES.includes(d.status);
            const canRollBack =
              !busy &&
              (d.versions ?? []).some(
                v => ['ready', 'rolled-back'].includes(v.status) && v.version !== d.current_version &&
                  (d.current_version === null || v.version < d.current_version)
              );
            return h(
              'tr',
              { class: this.deployment?.id === d.id ? 'jp-mod-selected' : null },
              h(
                'th',
                { scope: 'row' },
                h(
                  'button',
                  { type: 'button', class: 'jp-fedhub-linkbutton', title: 'Show this deployment', onclick: () => void this.follow(d.id) },
                  d.name
                )
              ),
              h('td', {}, d.target),
              h('td', { class: `jp-fedhub-status-${d.status}` }, d.status),
              h('td', {}, d.current_version === null ? '—' : String(d.current_version)),
              h('td', {}, formatTime(d.updated ? d.updated * 1000 : null)),
              h(
                'td',
                {},
                h(
                  'button',
                  {
                    class: 'jp-fedhub-button',
                    type: 'button',
                    disabled: !canRollBack,
                    'aria-label': `Roll back ${d.name}`,
                    title: canRollBack ? 'Serve the previous working version again' : 'No earlier working version',
                    onclick: () => void this.act(d, 'rollback')
                  },
                  'Roll back'
                ),
                h(
                  'button',
                  {
                    class: 'jp-fedhub-button',
                    type: 'button',
                    disabled: busy,
                    'aria-label': `Undeploy ${d.name}`,
                    onclick: () => void this.act(d, 'undeploy')
                  },
                  'Undeploy'
                )
              )
            );
          })
        )
      );
    } catch (err) {
      replace(this.table);
      showError(this.listStatus, 'Cannot list deployments', err);
    }
  }

  private async act(d: deployApi.IDeployment, action: 'rollback' | 'undeploy'): Promise<void> {
    if (action === 'undeploy' && !window.confirm(`Undeploy ${d.name}? Its endpoint stops serving.`)) {
      return;
    }
    replace(this.listStatus, spinner(action === 'undeploy' ? `Undeploying ${d.name}…` : `Rolling back ${d.name}…`));
    try {
      if (action === 'undeploy') {
        await deployApi.undeploy(d.id);
        if (this.deployment?.id === d.id) {
          this.stopFollowing();
          this.deployment = null;
          this.current.hidden = true;
        }
        replace(this.listStatus, `${d.name} undeployed.`);
      } else {
        const r = await deployApi.rollback(d.id);
        void this.follow(r.id, r);
      }
    } catch (err) {
      showError(this.listStatus, action === 'undeploy' ? 'Cannot undeploy' : 'Cannot roll back', err);
      return;
    }
    await this.loadDeployments();
  }

  private readonly modelSelect: HTMLSelectElement;
  private readonly modelInput: HTMLInputElement;
  private readonly nameInput: HTMLInputElement;
  private readonly targetSelect: HTMLSelectElement;
  private readonly edgeInput: HTMLInputElement;
  private readonly edgeRow: HTMLElement;
  private readonly deployButton: HTMLButtonElement;
  private readonly formStatus: HTMLElement;
  private readonly current: HTMLElement;
  private readonly listStatus: HTMLElement;
  private readonly table: HTMLTableElement;

  private busy = false;
  private nameEdited = false;
  private deployment: deployApi.IDeployment | null = null;
  private snippet: deployApi.ISnippet | null = null;
  private inference: deployApi.IInference | null = null;
  private inferError: string | null = null;
}
