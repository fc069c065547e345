"""The runnable examples run in the test suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_on_sqlite_with_no_server() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-> 1 connection for 3 scopes" in out
    assert "opened=2 closed_max_age=2 open now=0" in out
    assert "reused within the age: True; replaced after it: True" in out
    assert "got a new connection: True" in out
    assert "rows with n=99 afterwards: 0; rollbacks: 1" in out
    assert "every connection is closed: True" in out


def test_readme_quickstart_runs_in_an_empty_folder(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = readme.split("## Quickstart", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "quickstart.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "quickstart.py"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1,)"
    assert (tmp_path / "app.db").exists()


@pytest.mark.parametrize(
    ("module", "first", "second"),
    [
        # the plugin's rollback makes every test start from an empty table
        ("examples/test_asgi_app.py", "test_added_items_are_seen", "test_a_failed_add_keeps_nothing"),
        # sessions that commit are rolled back by the plugin too
        ("examples/test_sqlalchemy_app.py", "test_added_notes_are_seen", "test_a_failed_add_keeps_nothing"),
    ],
)
def test_example_tests_pass_with_the_plugin(module: str, first: str, second: str) -> None:
    """An example's tests pass whichever of two writing tests runs first."""
    for order in (first, second), (second, first):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
             *[f"{module}::{name}" for name in order], module],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3 passed" in result.stdout, result.stdout
