"""Granted datasets as links in the session's home: `~/datasets/<name>` -> the dataset's path.

Local and Slurm sessions share the home's file system with the data on their site, so a
session reaches a dataset through a symbolic link made when it starts. `link_script()` is a
pure builder of the POSIX shell lines that do it: the local backend runs them before the
server (`session_command()`), the Slurm backend puts them in the batch script's prologue, so
they run on the node that holds the data.

The folder is fedhub's: each start makes its links exactly the granted set. A link left by
an earlier session for a dataset no longer granted (a revoked grant) is removed, so old links
never keep data reachable. Real files and folders a user put there are never touched.
Read-only access is the site's file permissions' job, not the link's.
"""

from __future__ import annotations

import shlex
from typing import Mapping

LINKS_FOLDER = "datasets"


def link_script(datasets: Mapping[str, str], links_dir: str) -> str:
    """Shell lines making `links_dir/<name>` -> path for exactly `datasets` (name -> path).

    `links_dir` is shell text (e.g. '"$HOME"/datasets'), inserted as is; paths are quoted.
    Dataset names are catalogue names (lower-case letters, digits, '-'), safe in a case pattern.
    """
    keep = "|".join(sorted(datasets))
    lines = [
        "# fedhub: link the datasets this session may use, remove links to any other",
        f"fedhub_links={links_dir}",
        # never fail the session (the Slurm script runs with set -e): say what could not be done
        'mkdir -p "$fedhub_links" || echo "fedhub: cannot create $fedhub_links; datasets not linked" >&2',
        'for fedhub_link in "$fedhub_links"/* "$fedhub_links"/.[!.]*; do',
        '  [ -L "$fedhub_link" ] || continue',
    ]
    if keep:
        lines += ['  case "${fedhub_link##*/}" in', f"    {keep}) ;;",
                  '    *) rm -f "$fedhub_link" || true ;;', "  esac"]
    else:
        lines.append('  rm -f "$fedhub_link" || true')
    lines.append("done")
    for name, path in sorted(datasets.items()):
        link = f'"$fedhub_links"/{name}'
        lines += [f'if [ -L {link} ] || [ ! -e {link} ]; then ln -sfn {shlex.quote(path)} {link} || true; '
                  f'else echo "fedhub: {LINKS_FOLDER}/{name} exists and is not a link; not linking the dataset" >&2; fi']
    return "\n".join(lines) + "\n"


def session_command(cmd: list[str], datasets: Mapping[str, str]) -> list[str]:
    """`cmd` run by /bin/sh after the link script (exec: the server keeps the shell's pid)."""
    script = link_script(datasets, '"$HOME"/' + LINKS_FOLDER) + 'exec "$@"'
    return ["/bin/sh", "-c", script, "fedhub-session", *cmd]


def link_overrides(datasets: Mapping) -> dict:
    """The spawner trait value (`dataset_links`) for granted datasets (name -> DatasetLocation):
    what the local and Slurm backends give a session."""
    return {"dataset_links": {name: loc.path for name, loc in datasets.items()}}
