"""The report page: self-contained, complete, and rendered by a real browser."""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.browser import headless_flags
from tests.helpers import run_tool

pytestmark = pytest.mark.dag


def _headless(chromium: str, *args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, *headless_flags(profile), *args], capture_output=True, text=True, timeout=120
    )


def test_every_image_loads_in_chromium(snakemade: Path, chromium: str, tmp_path: Path) -> None:
    page = (snakemade / "reports/index.html").as_uri()
    done = _headless(
        chromium, "--virtual-time-budget=10000", "--dump-dom", page, profile=tmp_path / "profile"
    )
    body = re.search(r"<body[^>]*>", done.stdout)
    assert body, done.stderr[-2000:]
    images = int(re.search(r'data-images="(\d+)"', body.group()).group(1))
    broken = int(re.search(r'data-broken="(\d+)"', body.group()).group(1))
    assert images >= 12 and broken == 0
    comparison = re.search(r'<table[^>]*id="comparison".*?</table>', done.stdout, re.S)
    assert comparison and comparison.group().count("<tr") == 1 + 3  # header + three models
    shot = tmp_path / "report.png"
    _headless(
        chromium,
        f"--screenshot={shot}",
        "--window-size=1200,2400",
        page,
        profile=tmp_path / "profile",
    )
    assert shot.stat().st_size > 10_000


def test_the_page_is_self_contained_and_complete(snakemade: Path) -> None:
    text = (snakemade / "reports/index.html").read_text()
    sources = re.findall(r'<img src="([^"]{0,30})', text)
    assert sources and all(src.startswith("data:image/") for src in sources)
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from the network
    for name in ("stage-1", "stage-2", "resnet50"):
        assert f"{name} top losses" in text and f"{name} confusion" in text
    for heading in (
        "show_batch",
        "lr_find",
        "most confused",
        "per-class error rate",
        "stage-1 → stage-2: wrong → right",
        "stage-2 → resnet50: right → wrong",
    ):
        assert heading in text, heading
    assert "p(actual)" not in text  # titles are inside the figures; the legend explains them
    assert "probability of the actual class" in text


def test_snakemake_report_includes_the_page(snakemade: Path, tmp_path: Path) -> None:
    out = tmp_path / "snakemake-report.zip"
    run_tool(snakemade, "snakemake", "--report", str(out))
    assert out.stat().st_size > 10_000
    names = zipfile.ZipFile(out).namelist()
    assert any(name.endswith("/index.html") for name in names), names[:20]
    assert sum(name.endswith("top_losses.png") for name in names) == 3
