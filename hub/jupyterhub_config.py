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
