"""The spawn form: render it from live inventories, and turn its input into a request.

`parse_request` is the one gate for user input, from the HTML form and the REST API
alike; everything it refuses raises RequestError with a message meant for the user.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from fedhub.hub.catalogue import Catalogue, format_memory, parse_memory
from fedhub.hub.expiry import LIMITS_FILE, ExpiryError, TimeLimits, limits_for, load_limits
from fedhub.hub.policy import Entitlements, Policy

from .inventory import SiteInventory
from .placement import ANY_GPU, SessionRequest

AUTO = "auto"
SESSION_LABELS = {"jupyterlab": "JupyterLab", "vscode": "VS Code"}
KNOWN_OPTIONS = {"session_type", "cpus", "memory", "gpus", "gpu_type", "site", "datasets", "time_limit_hours"}


class RequestError(ValueError):
    """User input the spawner refuses; the message is shown to the user as is."""


class PolicyRefusal(RequestError):
    """Well-formed input the governance policy does not allow (the spawner answers 403)."""


def _scalar(value: Any) -> Any:
    # HTML forms give lists of strings; the REST API gives JSON values
    if isinstance(value, list):
        if len(value) != 1:
            raise RequestError(f"expected one value, got {len(value)}")
        return value[0]
    return value


def _number(value: Any, key: str, *, integer: bool) -> float | int:
    value = _scalar(value)
    if isinstance(value, bool):
        raise RequestError(f"{key}: expected a number, got {value!r}")
    try:
        number = int(str(value).strip()) if integer else float(str(value).strip())
    except (TypeError, ValueError):
        kind = "a whole number" if integer else "a number"
        raise RequestError(f"{key}: expected {kind}, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise RequestError(f"{key}: expected a finite number, got {value!r}")
    return number


def _dataset_names(raw: Any) -> tuple[str, ...]:
    if raw in (None, "", []):
        return ()
    if isinstance(raw, str):
        raw = [x.strip() for x in raw.split(",") if x.strip()]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise RequestError(f"datasets: expected a list of dataset names, got {raw!r}")
    return tuple(dict.fromkeys(raw))


def parse_request(options: Mapping[str, Any] | None, catalogue: Catalogue,
                  policy: Policy | None = None, groups: Sequence[str] = ()) -> SessionRequest:
    """Validate user options against the catalogue (and, with a policy, the user's grants);
    return a SessionRequest."""
    options = dict(options or {})
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise RequestError(f"unknown option(s) {unknown}; known: {sorted(KNOWN_OPTIONS)}")
    d, lim = catalogue.defaults, catalogue.limits

    session_type = str(_scalar(options.get("session_type", d.session_type)))
    if session_type not in SESSION_LABELS:
        raise RequestError(f"session_type: expected one of {list(SESSION_LABELS)}, got {session_type!r}")

    cpus = float(_number(options.get("cpus", d.cpus), "cpus", integer=False))
    if cpus <= 0 or cpus > lim.max_cpus:
        raise RequestError(f"cpus: expected a number above 0 and at most {lim.max_cpus:g}, got {cpus:g}")

    raw_mem = _scalar(options.get("memory", d.memory))
    try:
        memory = parse_memory(raw_mem)
    except (TypeError, ValueError):
        raise RequestError(f"memory: expected a size such as 2G or 512M, got {raw_mem!r}") from None
    if memory > lim.max_memory:
        raise RequestError(f"memory: at most {format_memory(lim.max_memory)} per session, "
                           f"got {format_memory(memory)}")

    gpus = int(_number(options.get("gpus", 0), "gpus", integer=True))
    if gpus < 0 or gpus > lim.max_gpus:
        raise RequestError(f"gpus: expected 0 to {lim.max_gpus}, got {gpus}")

    gpu_type = str(_scalar(options.get("gpu_type", ANY_GPU)) or ANY_GPU)
    if gpu_type in (AUTO, "none", ""):
        gpu_type = ANY_GPU
    if gpu_type != ANY_GPU and gpu_type not in catalogue.gpu_types:
        raise RequestError(f"gpu_type: {gpu_type!r} is not offered by any site; "
                           f"offered: {list(catalogue.gpu_types) or 'none'}")

    site = _scalar(options.get("site", AUTO))
    site = None if site in (None, "", AUTO) else str(site)
    if site is not None:
        if site not in catalogue.site_names:
            raise RequestError(f"site: unknown site {site!r}; sites: {list(catalogue.site_names)}")
        offered = catalogue.site(site).gpu_types
        if gpus and gpu_type != ANY_GPU and gpu_type not in offered:
            raise RequestError(f"site {site!r} offers no {gpu_type} GPUs; it offers {list(offered) or 'none'}")
    datasets = _dataset_names(options.get("datasets"))
    if policy is not None:
        _check_grants(policy, groups, site, gpus, gpu_type, datasets)
    elif datasets:
        raise RequestError("datasets: this hub has no dataset catalogue (no policy file)")
    return SessionRequest(cpus=cpus, memory=memory, gpus=gpus, gpu_type=gpu_type,
                          site=site, session_type=session_type, datasets=datasets)


def _check_grants(policy: Policy, groups: Sequence[str], site, gpus: int, gpu_type: str, datasets) -> None:
    ent = policy.entitlements(groups)
    if site is not None and not ent.allows_site(site):
        raise PolicyRefusal(f"site: {site} is not granted to you ({ent.source}); "
                            f"granted: {sorted(ent.sites or [])}")
    if gpus and not ent.may_use_gpus:
        raise PolicyRefusal(f"gpus: {ent.source} grants no GPUs")
    if gpus and gpu_type != ANY_GPU and not ent.allows_gpu_type(gpu_type):
        raise PolicyRefusal(f"gpu_type: {gpu_type} GPUs are not granted to you ({ent.source}); "
                            f"granted: {sorted(ent.gpu_types or [])}")
    for name in datasets:
        dataset = policy.dataset(name)
        if dataset is None:
            raise RequestError(f"datasets: unknown dataset {name!r}; known: {[d.name for d in policy.datasets]}")
        decision = policy.may_use(dataset, groups, "interactive")
        if not decision:
            raise PolicyRefusal(f"datasets: {decision.reason}")


def parse_time_limit(options: Mapping[str, Any] | None, limits: TimeLimits) -> float:
    """The session's length in hours: the form's ``time_limit_hours``, or the group's default
    when empty; refused beyond the group's ``max_hours`` with that limit named."""
    raw = (options or {}).get("time_limit_hours")
    if raw in (None, "", [""]):
        return float(limits.default_hours)
    hours = float(_number(raw, "time_limit_hours", integer=False))
    if hours <= 0:
        raise RequestError(f"time_limit_hours: expected a positive number of hours, got {hours:g}")
    if hours > limits.max_hours:
        raise RequestError(f"time_limit_hours: {hours:g} h is beyond your limit of {limits.max_hours:g} h")
    return hours


def time_limits_for(state_dir: str, groups: Sequence[str], log=None) -> TimeLimits | None:
    """The user's time limits from ``time-limits.json`` beside the state dir (the file the fedhub
    API's expiry watcher reads); None without a state dir. A bad file means the defaults, loudly,
    as in the watcher: the form must keep working."""
    if not state_dir:
        return None
    from pathlib import Path
    try:
        default, by_group = load_limits(Path(state_dir).parent / LIMITS_FILE)
    except ExpiryError as e:
        if log:
            log.error("time limits: %s; using the default time limits", e)
        return TimeLimits()
    return limits_for(list(groups), by_group, default)


def form_to_options(formdata: Mapping[str, list[str]]) -> dict[str, str]:
    """HTML form lists -> flat user_options (what the REST API would send)."""
    return {k: v[0] if isinstance(v, list) and len(v) == 1 else v
            for k, v in formdata.items() if k in KNOWN_OPTIONS}


def render_form(catalogue: Catalogue, inventories: Sequence[SiteInventory],
                session_types: Sequence[str] = ("jupyterlab",), policy: Policy | None = None,
                groups: Sequence[str] = (), time_limits: TimeLimits | None = None) -> str:
    """The spawn form's HTML: choices from the catalogue, free capacity from the inventories.
    With a policy, only the sites, GPU types and datasets the user's groups are granted."""
    e = html.escape
    d = catalogue.defaults
    ent = policy.entitlements(groups) if policy is not None else Entitlements()
    site_names = [s for s in catalogue.site_names if ent.allows_site(s)]
    gpu_types = [t for t in catalogue.gpu_types if ent.allows_gpu_type(t)] if ent.may_use_gpus else []
    inventories = [inv for inv in inventories if ent.allows_site(inv.site)]
    rows = []
    for inv in inventories:
        info = inv.to_dict()
        gpus = ", ".join(f"{g['free']}/{g['capacity']} {e(g['type'])}" for g in info["gpus"]
                         if g["type"] in gpu_types) or "none"
        state = "up" if inv.up else f"down: {e(inv.down_reason)}"
        rows.append(
            f"<tr data-site='{e(inv.site)}'><td>{e(inv.site)}</td><td>{e(inv.kind)}</td>"
            f"<td>{state}</td><td>{info['cpus']['free']:g}/{info['cpus']['capacity']:g}</td>"
            f"<td>{format_memory(info['memory']['free'])}/{format_memory(info['memory']['capacity'])}</td>"
            f"<td class='fedhub-free-gpus'>{gpus}</td></tr>")
    types = "".join(f"<option value='{e(t)}'>{e(SESSION_LABELS[t])}</option>" for t in session_types)
    gpu_opts = "<option value='any'>any type (auto)</option>" + "".join(
        f"<option value='{e(t)}'>{e(t)}</option>" for t in gpu_types)
    site_opts = "<option value='auto'>auto (fedhub chooses)</option>" + "".join(
        f"<option value='{e(s)}'>{e(s)}</option>" for s in site_names)
    lim = catalogue.limits
    max_gpus = lim.max_gpus if ent.max_gpus_per_user is None else min(lim.max_gpus, ent.max_gpus_per_user)
    if not gpu_types:
        max_gpus = 0
    datasets_html = grants_html = ""
    time_html = ""
    if time_limits is not None:
        time_html = (f"<label for='fedhub-time-limit'>Time limit (hours)</label>"
                     f"<input class='form-control' id='fedhub-time-limit' name='time_limit_hours' type='number' "
                     f"min='0.01' step='any' max='{time_limits.max_hours:g}' value='{time_limits.default_hours:g}' "
                     f"aria-describedby='fedhub-time-limit-help'>"
                     f"<small id='fedhub-time-limit-help'>At most {time_limits.max_hours:g} h in all, extensions "
                     f"included; a warning comes {time_limits.warn_minutes:g} min before the end.</small>")
    if policy is not None:
        usable = policy.usable_datasets(groups, "interactive")
        boxes = "".join(
            f"<label class='fedhub-dataset'><input type='checkbox' name='datasets' value='{e(ds.name)}'> "
            f"{e(ds.title or ds.name)} <small>({e(', '.join(ds.sites))})</small></label>" for ds in usable)
        datasets_html = (f"<fieldset class='fedhub-datasets'><legend>Datasets (sessions go where the data is)"
                         f"</legend>{boxes or '<p>No datasets are granted to you.</p>'}</fieldset>")
        quota = "no cap" if ent.max_gpus_per_user is None else f"at most {ent.max_gpus_per_user}"
        grants_html = (f"<p class='fedhub-grants'>Your grants ({e(ent.source)}): "
                       f"GPUs {quota} at once; GPU types: {e(', '.join(gpu_types) or 'none')}</p>")
    return f"""
<div class="fedhub-spawn-form">
  <label for="fedhub-session-type">Session type</label>
  <select class="form-control" id="fedhub-session-type" name="session_type">{types}</select>
  <label for="fedhub-cpus">CPUs</label>
  <input class="form-control" id="fedhub-cpus" name="cpus" type="number" min="0.1" step="0.1"
         max="{lim.max_cpus:g}" value="{d.cpus:g}">
  <label for="fedhub-memory">Memory</label>
  <input class="form-control" id="fedhub-memory" name="memory" value="{format_memory(d.memory)}">
  <label for="fedhub-gpu-type">GPU type</label>
  <select class="form-control" id="fedhub-gpu-type" name="gpu_type">{gpu_opts}</select>
  <label for="fedhub-gpus">GPUs</label>
  <input class="form-control" id="fedhub-gpus" name="gpus" type="number" min="0" max="{max_gpus}" value="0">
  <label for="fedhub-site">Site</label>
  <select class="form-control" id="fedhub-site" name="site">{site_opts}</select>
  {time_html}
  {datasets_html}{grants_html}
  <table class="table table-condensed fedhub-sites" aria-label="Free capacity per site">
    <thead><tr><th>Site</th><th>Kind</th><th>State</th><th>CPUs free</th><th>Memory free</th><th>GPUs free</th></tr></thead>
    <tbody>{''.join(rows)}</tbody>
  </table>
</div>
"""
