"""The one linter, run as part of the tests so CI checks what developers check."""

import shutil
import subprocess

from .conftest import ROOT


def test_ruff_clean():
    # ruff is a dev dependency: a missing linter is a broken install, not a reason to skip
    assert shutil.which("ruff"), "ruff is not installed: pip install -e '.[dev]'"
    r = subprocess.run(["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
