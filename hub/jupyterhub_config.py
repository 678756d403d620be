# JupyterHub configuration that `fedhub up` runs with. Do not edit: put overrides in
# the data dir's jupyterhub_config.py (or pass --config FILE), which is loaded last.
import json
import os

from fedhub.hub.hubconfig import configure

c = get_config()  # noqa: F821
_settings = json.load(open(os.environ["FEDHUB_UP_SETTINGS"]))
configure(c, _settings)
for _extra in _settings.get("extra_configs", []):
    load_subconfig(_extra)  # noqa: F821

from fedhub.hub.hubconfig import pass_federated_jobs_config  # noqa: E402

try:
    pass_federated_jobs_config(c)
except ValueError as _e:
    raise SystemExit(f"fedhub: jupyterhub_config.py: {_e}")

# Load the federation now (not at the first spawn): a bad catalogue or override stops the
# hub with the error, and the API serves the inventory from the first second.
from fedhub.hub.catalogue import CatalogueError  # noqa: E402
from fedhub.spawner.federation import Federation  # noqa: E402

try:
    import logging  # noqa: E402

    # the hub's own logger, so pollers' and backends' messages reach the hub log
    Federation.get(c.FederatedSpawner.catalogue_file, dict(c.FederatedSpawner.get("catalogue", {})),
                   c.FederatedSpawner.state_dir or None, logging.getLogger("JupyterHub"))
except CatalogueError as _e:
    raise SystemExit(f"fedhub: invalid site catalogue: {_e}")
