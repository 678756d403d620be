"""Docs that are generated from the code stay in step with it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_generated_from_the_current_traitlets():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_config_reference.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "docs/config-reference.md is stale; run python docs/gen_config_reference.py\n" + r.stdout


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "./dev up" in readme and "./dev test" in readme
    assert "exec ./dev test" in (ROOT / ".ci" / "run").read_text()
