"""Generate docs/config-reference.md from fedhub's traitlets.

    python docs/gen_config_reference.py          # write docs/config-reference.md
    python docs/gen_config_reference.py --check  # exit 1 if the file on disk is stale

Every fedhub setting is a traitlet with help text (``.tag(config=True)`` or
``config=True``); this script is the only place the reference comes from. The output
is deterministic: traits are sorted by name and nothing depends on the machine
(dynamic defaults are shown as the expression that computes them).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import sys
import textwrap
from pathlib import Path

from traitlets import Container, Dict, TraitType
from traitlets.config import Config

OUT = Path(__file__).resolve().with_name("config-reference.md")

JUPYTERHUB_SPAWNER_DOCS = "https://jupyterhub.readthedocs.io/en/stable/reference/api/spawner.html"

# placeholders used when asking hubconfig.configure() what `fedhub up` sets
DATA_DIR = "<data_dir>"
CATALOGUE = "<catalogue>"


def _classes():
    from fedhub.hub.app import FedhubUp
    from fedhub.spawner.backends.local import LocalSiteSpawner
    from fedhub.spawner.federated import FederatedSpawner

    return FedhubUp, FederatedSpawner, LocalSiteSpawner


def _other_classes():
    """Configurables outside the spawner path, each with where its settings are read."""
    from fedhub.hub.deploy.k8s import TritonOnKubernetes
    from fedhub.hub.deploy.server import InferenceServerApp
    from fedhub.hub.federation.manager import FederatedJobs
    from fedhub.hub.identity import _oidc_class
    from fedhub.server_ext.capture_settings import FedhubCapture

    hub_file = ("Set these as `c.{name}.<name>` in the data dir's `jupyterhub_config.py` "
                "(or the file given with `--config`).")
    return [
        (FederatedJobs, "Federated (Flower) jobs, run by the fedhub API service: SuperLink per job, "
         "SuperNodes through the sites' backends (see [federated.md](federated.md)).",
         hub_file.format(name="FederatedJobs") + " `fedhub up` passes them to the API service."),
        (_oidc_class(), "OIDC login (`fedhub up --authenticator oidc`): oauthenticator's "
         "GenericOAuthenticator with claims mapped to hub groups (see [identity.md](identity.md)).",
         "Set these in `identity.yaml` in the data dir (see identity.md), or as "
         "`c.FedhubOIDCAuthenticator.<name>` in `jupyterhub_config.py`."),
        (InferenceServerApp, "The embedded Triton-protocol inference server "
         "(see [inference-server.md](inference-server.md)).",
         "Pass these on its command line: `python -m fedhub.hub.deploy.server --InferenceServerApp.<name>=<value>`."),
        (TritonOnKubernetes, "Triton Deployment and KServe InferenceService manifests for Kubernetes "
         "sites (see [deploy.md](deploy.md)).", hub_file.format(name="TritonOnKubernetes")),
        (FedhubCapture, "Reproducibility capture inside a session (the server extension).",
         "Set these in the session's Jupyter server config, e.g. `c.FedhubCapture.auto_capture = False` "
         "in `jupyter_server_config.py`, or turn automatic capture off with `FEDHUB_AUTO_CAPTURE=0`."),
    ]


# ----------------------------------------------------------------- trait details


def type_name(trait: TraitType) -> str:
    name = type(trait).__name__
    if isinstance(trait, Container) and getattr(trait, "_trait", None) is not None:
        return f"{name} of {type(trait._trait).__name__}"
    if isinstance(trait, Dict) and getattr(trait, "_value_trait", None) is not None:
        return f"{name} of {type(trait._value_trait).__name__}"
    return name


def dynamic_default(cls, name: str) -> str | None:
    """The expression a @default(name) method returns, if the class has one."""
    gen = cls._all_trait_default_generators.get(name)
    func = getattr(gen, "func", None)
    if func is None:  # the trait's own static default
        return None
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return f"computed by {func.__qualname__}()"
    body = tree.body[0].body
    body = [stmt for stmt in body if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))]
    if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None:
        return ast.unparse(body[0].value)
    return f"computed by {func.__qualname__}()"


def default_text(cls, name: str, trait: TraitType) -> str:
    expr = dynamic_default(cls, name)
    if expr is not None:
        return f"computed at run time: `{expr}`"
    return f"`{trait.default_value_repr()}`"


def help_text(trait: TraitType) -> str:
    text = inspect.cleandoc(trait.help or "")
    return text or "(no help text)"


# ----------------------------------------------------------------- what `fedhub up` sets


def fedhub_up_config(everything: bool = True) -> Config:
    """The JupyterHub config that `fedhub up` produces, with placeholder paths.

    everything=True turns on every option that adds settings (--admin, the default
    shared-password login, MLflow); False turns them all off.
    """
    from fedhub.hub.app import PORT_NAMES
    from fedhub.hub.hubconfig import configure

    c = Config()
    settings = {
        "ip": "127.0.0.1", "port": 8000, "data_dir": DATA_DIR, "catalogue_file": CATALOGUE,
        "ports": {n: 0 for n in PORT_NAMES},
        "shared_password": "<shared password>", "mlflow": everything, "keep_servers": False,
        "authenticator": "shared-password" if everything else "<other>",
        "admin_users": ["<admin>"] if everything else [], "proxy_command": "<proxy>",
        "extra_configs": [], "start_timeout": 600,
    }
    configure(c, settings)
    return c


def _names(c: Config) -> set[tuple[str, str]]:
    return {(section, name) for section in c if isinstance(c[section], Config) for name in c[section]}


def _cli_names(cls) -> dict[str, list[str]]:
    """trait name -> its command-line options (aliases and flags), as Markdown."""
    out: dict[str, list[str]] = {}
    for alias, target in sorted(getattr(cls, "aliases", {}).items()):
        if isinstance(target, tuple):
            target = target[0]
        klass, _, trait = target.rpartition(".")
        if klass == cls.__name__:
            out.setdefault(trait, []).append(f"`--{alias}`")
    for flag, (cfg, _help) in sorted(getattr(cls, "flags", {}).items()):
        traits = cfg.get(cls.__name__, {})
        if len(cfg) == 1 and len(traits) == 1:
            (trait, value), = traits.items()
            out.setdefault(trait, []).append(f"`--{flag}` (sets `{value!r}`)")
    return out


def _flags(cls) -> list[tuple[str, str, str]]:
    rows = []
    for flag, (cfg, helptext) in sorted(getattr(cls, "flags", {}).items()):
        sets = ", ".join(f"{k}.{t}={v!r}" for k, d in sorted(cfg.items()) for t, v in sorted(d.items()))
        rows.append((f"--{flag}", sets, helptext))
    return rows


# ----------------------------------------------------------------- rendering


def trait_section(cls, name: str, trait: TraitType, *, cli=None, set_by_up=None) -> list[str]:
    lines = [f"### `{cls.__name__}.{name}`", ""]
    lines.append(f"- Type: `{type_name(trait)}`")
    lines.append(f"- Default: {default_text(cls, name, trait)}")
    if cli:
        lines.append("- Command line: " + ", ".join(cli))
    if set_by_up is not None:
        lines.append(f"- `fedhub up` sets it to: `{set_by_up!r}`")
    lines += ["", help_text(trait), ""]
    return lines


def render() -> str:
    FedhubUp, FederatedSpawner, LocalSiteSpawner = _classes()
    up_config = fedhub_up_config()

    def set_by_up(cls, name):
        section = up_config.get(cls.__name__)
        if section is not None and name in section:
            return section[name]
        return None

    L: list[str] = [
        "# Configuration reference",
        "",
        "<!-- Generated by docs/gen_config_reference.py from the code's traitlets. "
        "Do not edit by hand: run `python docs/gen_config_reference.py`. -->",
        "",
        "Every fedhub setting is a [traitlet](https://traitlets.readthedocs.io/) with help text.",
        "This page lists them, generated from the code.",
        "",
        f"Paths shown as `{DATA_DIR}` are inside the data dir of `fedhub up`.",
        f"`{CATALOGUE}` is the file given with `--catalogue`, else `{DATA_DIR}/sites.yaml`.",
        "",
        "- [`fedhub up` (FedhubUp)](#fedhub-up-fedhubup)",
        "- [FederatedSpawner](#federatedspawner)",
        "- [LocalSiteSpawner](#localsitespawner)",
        "- [SlurmSiteSpawner](#slurmsitespawner)",
        "- [KubeSiteSpawner](#kubesitespawner)",
        *[f"- [{cls.__name__}](#{cls.__name__.lower()})" for cls, _, _ in _other_classes()],
        "- [Other JupyterHub settings that `fedhub up` makes](#other-jupyterhub-settings-that-fedhub-up-makes)",
        "",
    ]

    # ---- FedhubUp
    cli = _cli_names(FedhubUp)
    L += [
        "## `fedhub up` (FedhubUp)",
        "",
        "`fedhub up` reads these from its command line only.",
        "Use the short option, or `--FedhubUp.<name>=<value>` for any of them.",
        "It does not read `c.FedhubUp` from a `jupyterhub_config.py` file.",
        "The data dir can also come from the environment variable `FEDHUB_DATA_DIR`.",
        "With the default shared-password login, users named with `--admin` also need "
        "`c.SharedPasswordAuthenticator.admin_password` to log in "
        "(see [site-operators.md](site-operators.md#security-and-least-privilege)).",
        "",
        "Flags:",
        "",
        "| flag | sets | what it does |",
        "| --- | --- | --- |",
    ]
    for flag, sets, helptext in _flags(FedhubUp):
        L.append(f"| `{flag}` | `{sets}` | {helptext} |")
    L.append("")
    for name, trait in sorted(FedhubUp.class_own_traits(config=True).items()):
        L += trait_section(FedhubUp, name, trait, cli=cli.get(name))

    # ---- FederatedSpawner
    L += [
        "## FederatedSpawner",
        "",
        "The JupyterHub spawner that places each session on a site (entry point name `federated`).",
        "Set these in `jupyterhub_config.py` as `c.FederatedSpawner.<name>`.",
        "Under `fedhub up`, that file is `jupyterhub_config.py` in the data dir, or the file given with `--config`.",
        "",
        "FederatedSpawner is a JupyterHub `Spawner`.",
        "Only the settings it defines itself are listed here.",
        f"For the inherited ones (`cmd`, `args`, `environment`, `start_timeout`, `http_timeout` ...) see "
        f"[JupyterHub's Spawner reference]({JUPYTERHUB_SPAWNER_DOCS}).",
        "",
        "FederatedSpawner does not start servers itself. It builds the chosen site's spawner "
        "(for a local site, `LocalSiteSpawner`) from the same hub configuration.",
        "So set inherited options such as `cmd` on `c.Spawner` (or on the site spawner's class), "
        "not on `c.FederatedSpawner`: the site spawner does not read the `FederatedSpawner` section.",
        "The exception is `environment`: FederatedSpawner passes its own `environment` to the site spawner, "
        "with the `FEDHUB_*` variables of the placement added.",
        "How `catalogue` combines with `catalogue_file` is described in "
        "[catalogue.md](catalogue.md#overriding-the-file-from-jupyterhub_configpy).",
        "FederatedSpawner also gives `options_form` and `apply_user_options` new defaults (the fedhub spawn form "
        "and its validation); it defines no new traits for them.",
        "",
    ]
    for name, trait in sorted(FederatedSpawner.class_own_traits(config=True).items()):
        L += trait_section(FederatedSpawner, name, trait, set_by_up=set_by_up(FederatedSpawner, name))

    # ---- LocalSiteSpawner
    L += [
        "## LocalSiteSpawner",
        "",
        "The spawner of `kind: local` sites: the session runs as a process on the hub's machine.",
        "It is JupyterHub's `SimpleLocalProcessSpawner` with restart handling; every session runs as "
        "the hub's own OS user (see [site-operators.md](site-operators.md)).",
        "Only the settings it defines itself are listed here.",
        f"For the inherited ones see `LocalProcessSpawner` in [JupyterHub's Spawner reference]({JUPYTERHUB_SPAWNER_DOCS}).",
        "Set them as `c.LocalSiteSpawner.<name>` (or `c.LocalProcessSpawner`, `c.Spawner`).",
        "",
        "fedhub sets `cpu_limit`, `mem_limit` and `environment` of each local session from its placement.",
        "`LocalProcessSpawner` does not enforce `cpu_limit` or `mem_limit`: the session only sees them "
        "as `CPU_LIMIT` and `MEM_LIMIT` in its environment.",
        "",
    ]
    for name, trait in sorted(LocalSiteSpawner.class_own_traits(config=True).items()):
        L += trait_section(LocalSiteSpawner, name, trait, set_by_up=set_by_up(LocalSiteSpawner, name))

    # ---- the other site spawners: same shape, own traits only
    from fedhub.spawner.backends.kubernetes import KubeSiteSpawner
    from fedhub.spawner.backends.slurm import SlurmSiteSpawner
    for cls, intro in (
        (SlurmSiteSpawner,
         "The spawner of `kind: slurm` sites: batchspawner's SlurmSpawner, adapted for hub users "
         "without Unix accounts. Per-site settings (slurm.conf, partition, account, QoS, runtime, "
         "host map) come from the catalogue's `options` (see [site-operators.md](site-operators.md)); "
         "these traits apply to every Slurm site."),
        (KubeSiteSpawner,
         "The spawner of `kind: kubernetes` sites: KubeSpawner with one set of reflectors per kube "
         "context. Per-site settings (context, namespace, image, storage, GPU product labels) come from "
         "the catalogue's `options` (see [site-operators.md](site-operators.md#kubernetes-sites))."),
    ):
        L += [f"## {cls.__name__}", "", f"{intro} Set these as `c.{cls.__name__}.<name>`.", ""]
        for name, trait in sorted(cls.class_own_traits(config=True).items()):
            L += trait_section(cls, name, trait, set_by_up=set_by_up(cls, name))

    # ---- the platform's other configurables: (class, what it is, where it is set)
    for cls, intro, where in _other_classes():
        L += [f"## {cls.__name__}", "", intro, "", where, ""]
        for name, trait in sorted(cls.class_own_traits(config=True).items()):
            L += trait_section(cls, name, trait, set_by_up=set_by_up(cls, name))

    # ---- what fedhub up sets elsewhere
    L += [
        "## Other JupyterHub settings that `fedhub up` makes",
        "",
        "`fedhub up` runs JupyterHub with a generated configuration (`fedhub.hub.hubconfig.configure`).",
        "It sets the settings below; values are in `hub/hubconfig.py`.",
        "Your own `jupyterhub_config.py` is loaded afterwards, so it can override any of them.",
        "Settings marked *optional* are made only with some options "
        "(`--admin`, the default shared-password login, MLflow on).",
        "",
    ]
    documented = {FederatedSpawner.__name__, LocalSiteSpawner.__name__, "SlurmSiteSpawner", "KubeSiteSpawner"}
    always = _names(fedhub_up_config(everything=False))
    for section, name in sorted(_names(up_config)):
        marks = []
        if (section, name) not in always:
            marks.append("*optional*")
        if section in documented:
            marks.append("described above")
        L.append(f"- `{section}.{name}`" + (f" ({', '.join(marks)})" if marks else ""))
    L.append("")
    return "\n".join(L).rstrip("\n") + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/config-reference.md from fedhub's traitlets.")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file on disk differs from what would be generated")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            current = OUT.read_text()
        except FileNotFoundError:
            current = ""
        if current != text:
            diff = difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                        "on disk", "generated", n=1)
            sys.stdout.writelines(diff)
            print(f"\n{OUT.name} is out of date: run `python docs/gen_config_reference.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
