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


def test_digits_on_paper_are_photos_of_the_size_asked_with_the_digit_in_the_centre_square(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import accuracy
    import numpy as np
    from PIL import Image

    folder = accuracy.digits_folder(tmp_path, per_class=2, size=(400, 300))
    photos = sorted(folder.glob("*/*.jpg"))
    assert len(photos) == 20 and {p.parent.name for p in photos} == {str(d) for d in range(10)}
    for path in photos:
        with Image.open(path) as photo:
            assert photo.size == (400, 300) and photo.format == "JPEG"
            grey = np.asarray(photo.convert("L"), np.float32)
        ink = np.argwhere(grey < 120)  # paper is 190-245 with noise; the strokes are dark
        assert len(ink) > 500
        # inside the centre 300x300 square (columns 50-349), which a validation crop keeps
        assert ink[:, 1].min() >= 50 and ink[:, 1].max() < 350
    refused = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "accuracy.py"), "--digits-size", "big"],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert refused.returncode == 2
    assert "--digits-size: 'big' is not WIDTHxHEIGHT" in refused.stderr.strip().splitlines()[-1]
