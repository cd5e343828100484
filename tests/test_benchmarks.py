"""The benchmarks run on a CPU in their short mode (their numbers are not asserted here:
timings belong in benchmarks/results/, not in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, tool_env

pytestmark = pytest.mark.dag


@pytest.mark.parametrize(
    ("script", "results"),
    [
        ("input_pipeline.py", "input_pipeline.json"),
        ("cpu_epoch.py", "cpu_epoch.json"),
        ("dag_overhead.py", "dag_overhead.json"),
        ("fixed_costs.py", "fixed_costs.json"),
        ("serve.py", "serve.json"),
        ("accuracy.py", "accuracy.json"),
    ],
)
def test_benchmark_runs_in_short_mode(script: str, results: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        env=tool_env(PETS_BENCH_RESULTS=str(tmp_path)),
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = json.loads((tmp_path / results).read_text())
    assert written["rows"] and written["machine"]["torch"]


def test_gpu_check_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0
