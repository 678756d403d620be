/**
 * fedhub's JupyterLab extension: one plugin per panel.
 *
 *   fedhub:experiments  left panel "Experiments" (MLflow runs, charts, compare, reproduce)
 *   fedhub:sites        left panel "Sites" (the federation's live inventory)
 *   fedhub:federated    left panel "Federated" (Flower jobs across sites, live per-round chart)
 *   fedhub:deploy       left panel "Deploy" (models to inference servers and edge devices)
 *   fedhub:status       status-bar item (this session's site and GPUs)
 *   fedhub:expiry       the session's time limit: a notification with "Extend" (expiry.ts)
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

import { DeployPanel } from './deploy';
import { ExperimentsPanel } from './experiments';
import { expiryPlugin } from './expiry';
import { FederatedPanel } from './federated';
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

/** A left panel with a restorer entry and a "Show" command (Federated, Deploy). */
function sidePanelPlugin(
  id: string,
  description: string,
  label: string,
  rank: number,
  make: () => Widget
): JupyterFrontEndPlugin<void> {
  return {
    id,
    description,
    autoStart: true,
    optional: [ILayoutRestorer],
    activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
      const panel = make();
      app.shell.add(panel, 'left', { rank });
      if (restorer) {
        restorer.add(panel, panel.id);
      }
      app.commands.addCommand(`${id}-show`, {
        label: `Show fedhub ${label}`,
        execute: () => app.shell.activateById(panel.id)
      });
    }
  };
}

const federatedPlugin = sidePanelPlugin(
  'fedhub:federated',
  'Launch and watch federated (Flower) jobs across sites.',
  'Federated',
  302,
  () => new FederatedPanel()
);

const deployPlugin = sidePanelPlugin(
  'fedhub:deploy',
  'Deploy models to Triton-protocol inference servers and edge devices.',
  'Deploy',
  303,
  () => new DeployPanel()
);

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

export default [experimentsPlugin, sitesPlugin, federatedPlugin, deployPlugin, statusPlugin, expiryPlugin];
