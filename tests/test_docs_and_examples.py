"""The README's code and the examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    [code] = re.findall(r"## In code\n\n```python\n(.*?)```", readme, re.S)
    assert len(code.strip().splitlines()) <= 25
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "2 ['entity.created', 'message.received', 'run.started', 'state.set', 'run.completed']"
    )
    assert (
        "This prints `2 ['entity.created', 'message.received', 'run.started', 'state.set',"
        in readme
    )


def test_quickstart_example_runs_on_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "quick.db"
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    for expected_sum in (6, 18):  # a second run goes on from the state in the file
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(db)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        last = out.stdout.strip().splitlines()[-1]
        assert last == f"progress: {{'waiting': 0, 'sum': {expected_sum}, 'reported': True}}"
        assert "child.finished" in out.stdout and "timer.fired" in out.stdout


def test_readme_quickstart_names_both_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/wakeful demo" in readme  # run by tests/http/test_client_and_cli.py
    assert ".venv/bin/python -m pytest" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-m pytest" in ci


def test_durable_approval_example_survives_the_restart(tmp_path: Path) -> None:
    db = tmp_path / "approvals.db"
    for _ in range(2):  # and again on the same file: a new run, a new approval
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "durable_approval.py"), str(db)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines[0].endswith(
            ": suspended, waiting for approval:cleanup-" + lines[0].split(":")[0]
        )
        assert lines[1].endswith(": completed: deleted 3 files under /tmp/cache")
        assert lines[2] == "steps executed: ['plan', 'delete']"  # the plan step ran once


def test_agent_example_waits_for_approval_and_finishes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "agent.py"), str(tmp_path / "agent.db")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "suspended, waiting for approval:c2",
        "approved: True",
        "completed (end_turn): Done: deleted tmp.log.",
        "disk: ['report.txt']",
    ]
