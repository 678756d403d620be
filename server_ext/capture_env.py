"""What `fedhub.server_ext.track()` and automatic capture read about a run's surroundings:
which notebook or script runs, the git state, the installed packages, the hardware.

Standard library only, and cheap: these run when a run starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

NOTEBOOK_ENV = "FEDHUB_NOTEBOOK"

# ---------------------------------------------------------------- what ran
def _in_kernel() -> bool:
    """True inside an IPython kernel (JupyterLab, VS Code, nbclient, papermill)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _vscode_notebook() -> str | None:
    try:
        from IPython import get_ipython
        shell = get_ipython()
        return shell.user_ns.get("__vsc_ipynb_file__") if shell is not None else None
    except Exception:
        return None


def _resolve_notebook(value: str | None) -> Path | None:
    if not value or not value.endswith(".ipynb"):
        return None
    p = Path(value).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    # jupyter-server gives the path relative to its root; the kernel runs in the notebook's directory
    for cand in (Path.cwd() / p, Path.cwd() / p.name):
        if cand.is_file():
            return cand.resolve()
    return None


def _python_mode() -> str | None:
    """"-m" or "-c" if the interpreter ran a module or a command rather than a script file."""
    args = getattr(sys, "orig_argv", [])[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-m", "-c") or (a.startswith(("-m", "-c")) and not a.startswith("--")):
            return a[:2]
        if a in ("-X", "-W", "-Q"):
            i += 2
            continue
        if not a.startswith("-"):
            return None
        i += 1
    return None


def find_entrypoint(notebook: str | os.PathLike | None = None) -> tuple[str | None, Path | None]:
    """("notebook" | "script" | None, path) of what is running.

    Notebook: the explicit argument, else (inside a kernel) $FEDHUB_NOTEBOOK, VS Code's
    `__vsc_ipynb_file__`, $JPY_SESSION_NAME (set by jupyter-server for a notebook's
    kernel). Script: the explicit argument if it is a .py file, else sys.argv[0].
    """
    if notebook is not None:
        p = Path(notebook).expanduser().resolve()
        if not p.is_file():
            raise FileNotFoundError(f"fedhub.track: no such notebook or script {str(notebook)!r}")
        return ("notebook" if p.suffix == ".ipynb" else "script"), p
    if _in_kernel():
        for value in (os.environ.get(NOTEBOOK_ENV), _vscode_notebook(), os.environ.get("JPY_SESSION_NAME")):
            p = _resolve_notebook(value)
            if p is not None:
                return "notebook", p
        return None, None
    argv0 = sys.argv[0] if sys.argv else ""
    if _python_mode() in ("-m", "-c"):
        return None, None  # `python -m tool` / `python -c`: no script of the user's to re-run
    if argv0.endswith(".py") and os.path.isfile(argv0):
        return "script", Path(argv0).resolve()
    return None, None


# ---------------------------------------------------------------- environment
def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _direct_url_line(dist_dir: str, name: str, version: str) -> str | None:
    path = os.path.join(dist_dir, "direct_url.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    url = d.get("url", "")
    if d.get("dir_info", {}).get("editable"):
        return f"# Editable install ({name}=={version})\n-e {url}"
    vcs = d.get("vcs_info")
    if vcs:
        return f"{name} @ {vcs.get('vcs', 'git')}+{url}@{vcs.get('commit_id', '')}"
    if url.startswith("file:") and "dir_info" in d:
        return f"{name} @ {url}"
    if "archive_info" in d:
        return f"{name} @ {url}"
    return None


def freeze(paths: list[str] | None = None) -> list[str]:
    """The installed distributions as `pip freeze` lines (name==version, `-e` and `@ url` forms).

    Reads distribution names and versions from the `*.dist-info` directory names on
    sys.path (first one wins, as for imports); only `*.egg-info` and direct-URL installs
    read a file. ~1 ms instead of ~200 ms (importlib.metadata) or ~500 ms (pip freeze).
    """
    seen: dict[str, str] = {}
    for entry in (sys.path if paths is None else paths):
        entry = entry or os.getcwd()
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for n in names:
            if n.endswith(".dist-info"):
                name, sep, version = n[:-10].partition("-")
                if not sep:
                    continue
                key = _normalize(name)
                if key in seen:
                    continue
                seen[key] = _direct_url_line(os.path.join(entry, n), name, version) or f"{name}=={version}"
            elif n.endswith(".egg-info"):
                try:
                    from importlib.metadata import PathDistribution
                    dist = PathDistribution(Path(entry) / n)
                    name, version = dist.metadata["Name"], dist.version
                except Exception:
                    continue
                if name and _normalize(name) not in seen:
                    seen[_normalize(name)] = f"{name}=={version}"
    return [seen[k] for k in sorted(seen)]


def conda_environment(prefix: str | None = None) -> str | None:
    """`conda env export`'s YAML for the active conda env, read from conda-meta (no conda call).

    Package records are named `<name>-<version>-<build>.json`; reading the names is
    what keeps this cheap (the records themselves list every file of a package).
    """
    prefix = prefix or os.environ.get("CONDA_PREFIX")
    if not prefix:
        return None
    meta = Path(prefix) / "conda-meta"
    if not meta.is_dir():
        return None
    deps = []
    for f in sorted(meta.glob("*.json")):
        parts = f.stem.rsplit("-", 2)
        if len(parts) == 3:
            deps.append("=".join(parts))
    name = os.environ.get("CONDA_DEFAULT_ENV") or Path(prefix).name
    lines = [f"name: {name}", "dependencies:"] + [f"  - {d}" for d in deps] + [f"prefix: {prefix}", ""]
    return "\n".join(lines)


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=30)


def git_state(where: Path) -> dict | None:
    """{commit, branch, toplevel, remote, dirty, untracked, diff} of the git work tree holding `where`."""
    if shutil.which("git") is None:
        return None
    try:
        top = _git(where, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return None
        state = {"toplevel": top.stdout.strip(), "commit": None, "branch": None, "remote": None}
        head = _git(where, "rev-parse", "HEAD", "--abbrev-ref", "HEAD")
        if head.returncode == 0:
            state["commit"], state["branch"] = head.stdout.split()[:2]
        remote = _git(where, "config", "--get", "remote.origin.url")
        state["remote"] = remote.stdout.strip() or None
        status = _git(where, "status", "--porcelain=v1", "-z", "--untracked-files=all")
        entries = [e for e in status.stdout.split("\0") if e]
        state["untracked"] = [e[3:] for e in entries if e.startswith("??")]
        diff = _git(where, "diff", "HEAD") if state["commit"] else _git(where, "diff", "--cached")
        state["diff"] = diff.stdout
        state["dirty"] = bool(diff.stdout.strip())
        return state
    except (OSError, subprocess.SubprocessError):
        return None


def _relative(path: Path, base: Path) -> str | None:
    try:
        return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return None


def _gpu_count() -> str:
    if os.environ.get("FEDHUB_GPUS"):
        return os.environ["FEDHUB_GPUS"]
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not cvd or cvd in ("-1", "NoDevFiles"):
        return "0"
    return str(len([d for d in cvd.split(",") if d.strip()]))


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def hardware() -> dict:
    """Where this runs: fedhub's placement (env set by the spawner) and the machine."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "site": os.environ.get("FEDHUB_SITE") or "unknown",
        "site_kind": os.environ.get("FEDHUB_SITE_KIND"),
        "node": os.environ.get("FEDHUB_NODE"),
        "session_type": os.environ.get("FEDHUB_SESSION_TYPE"),
        "gpu_type": os.environ.get("FEDHUB_GPU_TYPE", ""),
        "gpus": _gpu_count(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "image": os.environ.get("JUPYTER_IMAGE_SPEC") or os.environ.get("JUPYTER_IMAGE"),
    }
    smi = shutil.which("nvidia-smi")
    if smi and info["gpus"] != "0":
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            info["nvidia_smi"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def set_seeds(seed: int) -> list[str]:
    """Seed Python's `random`, numpy's global generator, and torch / tensorflow if already imported."""
    seeded = []
    random.seed(seed)
    seeded.append("random")
    os.environ["PYTHONHASHSEED"] = str(seed)  # for subprocesses this run starts
    try:
        import numpy
        numpy.random.seed(seed % 2**32)
        seeded.append("numpy")
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.manual_seed(seed)
            seeded.append("torch")
        except Exception:
            pass
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            tf.random.set_seed(seed)
            seeded.append("tensorflow")
        except Exception:
            pass
    return seeded


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()
