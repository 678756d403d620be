/**
 * fedhub's JupyterLab extension: one plugin per panel.
 *
 *   fedhub:experiments  left panel "Experiments" (MLflow runs, charts, compare, reproduce)
 *   fedhub:sites        left panel "Sites" (the federation's live inventory)
 *   fedhub:status       status-bar item (this session's site and GPUs)
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { IStatusBar } from '@jupyterlab/statusbar';

import { ExperimentsPanel } from './experiments';
import { SitesPanel } from './sites';
import { StatusItem } from './status';

const experimentsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'fedhub:experiments',
  description: "The user's MLflow experiments and runs: charts, compare, reproduce.",
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
    const panel = new ExperimentsPanel();
    app.shell.add(panel, 'left', { rank: 300 });
    if (restorer) {
      restorer.add(panel, 'fedhub-experiments');
    }
    app.commands.addCommand('fedhub:show-experiments', {
      label: 'Show fedhub Experiments',
      execute: () => app.shell.activateById(panel.id)
    });
  }
};

const sitesPlugin: JupyterFrontEndPlugin<void> = {
  id: 'fedhub:sites',
  description: "The federation's sites with their live free capacity.",
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
    const panel = new SitesPanel();
    app.shell.add(panel, 'left', { rank: 301 });
    if (restorer) {
      restorer.add(panel, 'fedhub-sites');
    }
    app.commands.addCommand('fedhub:show-sites', {
      label: 'Show fedhub Sites',
      execute: () => app.shell.activateById(panel.id)
    });
  }
};

const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: 'fedhub:status',
  description: "This session's site and GPUs in the status bar.",
  autoStart: true,
  optional: [IStatusBar],
  activate: (_app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    if (!statusBar) {
      return;
    }
    statusBar.registerStatusItem('fedhub:status', {
      item: new StatusItem(),
      align: 'left',
      rank: 100
    });
  }
};

export default [experimentsPlugin, sitesPlugin, statusPlugin];
