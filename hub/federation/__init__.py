"""Federated rounds with Flower: example apps, app preparation and compression.

Nothing here imports flwr at package import time (fedhub.hub stays light to import).
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


def example_app(name: str = "digits") -> Path:
    """The directory of a bundled example Flower app (a standard Flower app layout)."""
    path = EXAMPLES_DIR / name
    if not (path / "pyproject.toml").is_file():
        known = sorted(p.name for p in EXAMPLES_DIR.iterdir() if (p / "pyproject.toml").is_file())
        raise ValueError(f"no example Flower app named {name!r}; known: {known}")
    return path
