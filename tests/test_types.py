"""The type check in CI: mypy over `appliance/` (settings in pyproject.toml) finds no error.

The protocols at the seams (pressure source, sinks, edges, listener, audio output) only
protect anything if something checks them; pytest runs in CI, so this test is that check.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pip install -e '.[dev]')")
def test_mypy_finds_no_type_error_in_appliance() -> None:
    # No arguments: `files`, the strictness flags and the per-library overrides come from
    # [tool.mypy] in pyproject.toml, so this runs exactly what a developer runs by hand.
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    report = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, f"mypy found type errors:\n{report}"
    assert "Success: no issues found" in report, report


def test_mypy_configuration_checks_the_whole_package_strictly() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["files"] == ["appliance"]
    for flag in ("check_untyped_defs", "warn_unused_ignores", "warn_redundant_casts",
                 "no_implicit_optional", "strict_equality"):
        assert config.get(flag) is True, flag
    # missing imports are forgiven only for named untyped libraries, never globally
    assert "ignore_missing_imports" not in config
