"""Workshop preset: one machine serving a class of N seats.

``workshop_catalogue`` is the catalogue a class needs: one local site with room for exactly
N sessions of the per-seat size (max_sessions = N), and that size as the default request,
so seat N+1 is refused with the placement's "full (N of N sessions)" reason.
"""

from __future__ import annotations


class WorkshopError(ValueError):
    pass


def workshop_catalogue(seats: int, seat_cpus: float, seat_memory: str) -> str:
    if seats < 1:
        raise WorkshopError(f"--seats: expected a positive number of seats, got {seats}")
    if seat_cpus <= 0:
        raise WorkshopError(f"--seat-cpus: expected a positive number of CPUs, got {seat_cpus}")
    units = {"M": 10**6, "G": 10**9}
    unit = seat_memory[-1:].upper()
    try:
        amount = float(seat_memory[:-1])
    except ValueError:
        amount = -1
    if unit not in units or amount <= 0:
        raise WorkshopError(f"--seat-memory: expected a size such as 2G or 512M, got {seat_memory!r}")
    total_mb = int(amount * units[unit] / 10**6 * seats)
    return f"""\
# written by `fedhub up --seats {seats}`: a class of {seats} seats on this machine
sites:
  - name: workshop
    kind: local
    description: This machine, {seats} seats of {seat_cpus:g} CPU / {seat_memory}
    cpus: {seat_cpus * seats:g}
    memory: {total_mb}M
    max_sessions: {seats}
defaults:
  cpus: {seat_cpus:g}
  memory: {seat_memory}
"""


def copy_landing_notebook(notebook: str, home: str) -> bool:
    """Copy the class's landing notebook into a home that does not have it yet (a student's
    edited copy is never overwritten); returns whether it copied."""
    import shutil
    from pathlib import Path
    src, dest_dir = Path(notebook), Path(home)
    dest = dest_dir / src.name
    if dest.exists():
        return False
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return True


def landing_hook(notebook: str, home_template: str):
    """A JupyterHub pre_spawn_hook putting the landing notebook in each new (local) home."""
    def hook(spawner):
        copy_landing_notebook(notebook, home_template.format(username=spawner.user.name))
    return hook
