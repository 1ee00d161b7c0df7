"""The code passes the linter (ruff: pycodestyle, pyflakes, one quote style; settings in ruff.toml), as an
ament package's flake8 test does."""
import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def test_ruff_finds_nothing():
    if importlib.util.find_spec('ruff') is None:
        pytest.skip('ruff is not installed (requirements.txt pins it for the tests)')
    result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '--output-format', 'concise',
                             str(REPO_ROOT)], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
