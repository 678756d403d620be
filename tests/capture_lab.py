"""Shared by test_capture.py and test_reproduce.py: a local MLflow store, a git project,
notebooks built with nbformat and executed for real with nbclient (fresh kernels).

Runs are made once per pytest session (kernels are the slow part) and cached here.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

DETERMINISTIC = [
    ("markdown", "# Digits\nA deterministic run: fixed seed through `track()`, fixed split."),
    ("code", "import json, random, warnings\n"
             "import mlflow\n"
             "import numpy as np\n"
             "from sklearn.datasets import load_digits\n"
             "from sklearn.linear_model import LogisticRegression\n"
             "from sklearn.metrics import accuracy_score, log_loss\n"
             "from sklearn.model_selection import train_test_split\n"
             "from fedhub.server_ext import track\n"
             "from helper import FACTOR\n"
             "warnings.simplefilter('ignore')  # lbfgs stops early on purpose: a short run"),
    ("code", "mlflow.set_experiment('digits')\n"
             "run = mlflow.start_run(run_name='digits-lr')\n"
             "cap = track(seed=7, inputs=['data/params.json'])\n"
             "params = json.load(open('data/params.json'))\n"
             "mlflow.log_params(params)\n"
             "cap"),
    ("code", "X, y = load_digits(return_X_y=True)\n"
             "X = X + np.random.normal(0, 2.0, X.shape)  # the global RNG: seeded by track(seed=7)\n"
             "Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=params['split'])\n"
             "for step, c in enumerate(params['Cs']):\n"
             "    clf = LogisticRegression(C=c * FACTOR, max_iter=params['max_iter']).fit(Xtr, ytr)\n"
             "    mlflow.log_metric('accuracy', accuracy_score(yte, clf.predict(Xte)), step=step)\n"
             "    mlflow.log_metric('loss', log_loss(yte, clf.predict_proba(Xte)), step=step)\n"
             "mlflow.log_metric('py_random', random.random())  # seeded too\n"
             "print('accuracy', accuracy_score(yte, clf.predict(Xte)))"),
    ("code", "print(cap.seconds_sync)"),
    ("code", "mlflow.end_run()"),
]

NONDETERMINISTIC = [
    ("code", "import os\nimport mlflow\nfrom fedhub.server_ext import track"),
    ("code", "mlflow.set_experiment('noisy')\n"
             "with mlflow.start_run(run_name='noisy'):\n"
             "    track()\n"
             "    mlflow.log_metric('score', int.from_bytes(os.urandom(6), 'little') / 2**48)\n"
             "    mlflow.log_metric('constant', 1.0)"),
]

PARAMS = {"Cs": [0.01, 0.1], "max_iter": 40, "split": 3}


def notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) if kind == "code" else nbformat.v4.new_markdown_cell(src)
                for kind, src in cells]
    return nb


def execute(path: Path, env: dict | None = None, timeout: int = 120) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    # a graceful shutdown that waits for the kernel's exit, where capture finishes its upload
    # (jupyter_client kills a kernel after 5 s by default: too short for nbconvert on a busy machine)
    km = KernelManager(kernel_name="python3", shutdown_wait_time=120)
    try:
        NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute(env={**os.environ, **(env or {})})
    finally:
        if km.has_kernel:
            km.shutdown_kernel()  # graceful: returns once the kernel exited (or 120 s passed)
    return nb


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


@dataclass
class Lab:
    root: Path
    tracking_uri: str
    project: Path
    det_run: str = ""
    nondet_run: str = ""
    plain_run: str = ""
    conda_prefix: Path | None = None
    executed: dict = field(default_factory=dict)


_lab: Lab | None = None


def make_lab(root: Path) -> Lab:
    """Build once: store, project (git repo with an uncommitted change), the runs."""
    global _lab
    if _lab is not None:
        return _lab
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    for exp in ("digits", "noisy", "plain"):  # artifacts next to the store, not in the kernel's cwd
        client.create_experiment(exp, artifact_location=(root / "artifacts" / exp).as_uri())
    project = root / "project"
    nbdir = project / "nb"
    (nbdir / "data").mkdir(parents=True)
    (nbdir / "helper.py").write_text("FACTOR = 1.0\n")
    # a module named like one nbconvert tries to import: capture's nbconvert worker must not pick it up
    (nbdir / "notebook.py").write_text("raise SystemExit('the user folder is on the nbconvert worker path')\n")
    nbformat.write(notebook(DETERMINISTIC), nbdir / "digits.ipynb")
    nbformat.write(notebook(NONDETERMINISTIC), nbdir / "noisy.ipynb")
    (project / ".gitignore").write_text("data/\n")
    git(project, "init", "-q", "-b", "main")
    git(project, "add", ".gitignore", "nb/helper.py", "nb/notebook.py", "nb/digits.ipynb", "nb/noisy.ipynb")
    git(project, "commit", "-q", "-m", "digits")
    git(project, "remote", "add", "origin", "https://example.org/lab/digits.git")
    (nbdir / "helper.py").write_text("FACTOR = 2.0  # uncommitted: the capture's git.diff has it\n")
    (nbdir / "data" / "params.json").write_text(json.dumps(PARAMS))

    # a conda env as conda leaves it on disk (only conda-meta is read)
    conda = root / "conda-env"
    (conda / "conda-meta").mkdir(parents=True)
    for rec in ("python-3.11.7-hab00c5b_0", "numpy-2.4.6-py311h64a7726_0", "ca-certificates-2024.2.2-hbcca054_0"):
        (conda / "conda-meta" / f"{rec}.json").write_text("{}")

    env = {"MLFLOW_TRACKING_URI": uri, "FEDHUB_SITE": "test-site", "FEDHUB_GPU_TYPE": "a100",
           "CUDA_VISIBLE_DEVICES": "0,1", "CONDA_PREFIX": str(conda),
           # one BLAS thread: results do not depend on the machine's load, and it is faster on
           # a busy machine; captured, so the reproduction's kernel gets it too
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           # what jupyter-server sets: the notebook's path relative to its root
           "JPY_SESSION_NAME": "nb/digits.ipynb"}
    lab = Lab(root=root, tracking_uri=uri, project=project, conda_prefix=conda)
    # both notebooks at once (each in its own kernel): kernel start-up is most of the time
    with ThreadPoolExecutor(2) as pool:
        digits = pool.submit(execute, nbdir / "digits.ipynb", env)
        noisy = pool.submit(execute, nbdir / "noisy.ipynb", {"MLFLOW_TRACKING_URI": uri,
                                                             "FEDHUB_NOTEBOOK": str(nbdir / "noisy.ipynb")})
        lab.executed["digits"], lab.executed["noisy"] = digits.result(), noisy.result()
    for exp, attr in (("digits", "det_run"), ("noisy", "nondet_run")):
        (run,) = client.search_runs([client.get_experiment_by_name(exp).experiment_id],
                                    filter_string="tags.`fedhub.capture` = '1'")
        setattr(lab, attr, run.info.run_id)
    # a run without fedhub's capture
    plain = client.create_run(client.get_experiment_by_name("plain").experiment_id, run_name="plain")
    client.log_metric(plain.info.run_id, "acc", 0.5)
    client.set_terminated(plain.info.run_id)
    lab.plain_run = plain.info.run_id
    # after the capture, the working tree moves on: reproduction must use the captured diff
    (nbdir / "helper.py").write_text("FACTOR = 50.0  # changed after the run\n")
    _lab = lab
    return lab

