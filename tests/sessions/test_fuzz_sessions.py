"""Mutated real sessions over show, replay --check and export: no traceback, no hang, bounded memory.

The runner (`tests/sessions/fuzz_sessions.py`) runs in a subprocess under a 4 GiB address-space
limit and reports cases, failures and its peak RSS. MECHSCOPE_FUZZ_EXAMPLES raises the case count
(default 200); MECHSCOPE_FUZZ_SCRIPTS the number of exported scripts run (default 2).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_fuzzed_sessions_never_escape_the_error_path(tmp_path: Path) -> None:
    examples = os.environ.get("MECHSCOPE_FUZZ_EXAMPLES", "200")
    scripts = os.environ.get("MECHSCOPE_FUZZ_SCRIPTS", "2")
    report_path = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sessions.fuzz_sessions", "--examples", examples,
         "--scripts", scripts, "--output", str(report_path)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=1800,
        preexec_fn=_limit_memory)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    print(f"fuzz: {report['cases']} cases, {report['commands']} commands, {report['exported']} exports, "
          f"{len(report['scripts_run'])} scripts run, {report['failing_cases']} failing cases, "
          f"peak RSS {report['peak_rss_mib']} MiB, {report['seconds']} s")
    assert report["cases"] == int(examples)
    assert report["failures"] == [], report["failures"][:10]
    assert report["peak_rss_mib"] < 2048
