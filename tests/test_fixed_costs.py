"""What each stage costs around its work (issue 17): a stage that never needs torch does not
import it to be recorded, figures read photos without torch, each file is hashed once, the pt2
and ONNX copies come from one trace, and every stage process reports where its seconds went."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torchvision

from pets import fingerprints
from pets.timings import Clock
from tests.helpers import SMALL_SIZES, tool_env


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=tool_env(**env),
    )


def test_lineage_names_torch_without_importing_it(tmp_path: Path) -> None:
    done = _python(
        """
        import json, sys
        from pathlib import Path
        from pets.config import parse_params
        from pets.tracking import device_name, lineage_tags
        params = parse_params({})
        tags = {**lineage_tags(Path("."), params), "device": device_name(params)}
        print(json.dumps({"tags": tags, "torch": "torch" in sys.modules}))
        """
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert not found["torch"]
    tags = found["tags"]
    assert tags["torch"] == torch.__version__ and tags["torchvision"] == torchvision.__version__
    assert tags["cuda"] == (torch.version.cuda or "none") and "cores" in tags["device"]


def test_figures_read_photos_without_torch(tmp_path: Path) -> None:
    from pets.cache import PixelCache, build_cache
    from pets.synthetic import make_pets

    make_pets(tmp_path / "set", 2, classes=2, seed=3, sizes=SMALL_SIZES)
    names = sorted(p.relative_to(tmp_path / "set").as_posix() for p in tmp_path.rglob("*.jpg"))
    build_cache(tmp_path / "set", names, 64, tmp_path / "cache")
    pixels = PixelCache(tmp_path / "cache")
    rows = pixels.rows_for(names[::-1])
    canvases, sizes = pixels.read(rows), pixels.sizes(rows).int().tolist()
    for photo, canvas, (height, width) in zip(pixels.photos(rows), canvases, sizes, strict=True):
        assert photo.shape == (height, width, 3)
        assert (photo == canvas[:height, :width].numpy()).all()
    done = _python(
        f"""
        import sys
        from pathlib import Path
        from pets.cache import PixelCache
        import pets.stages.interpret, pets.stages.report
        pixels = PixelCache(Path({str(tmp_path / "cache")!r}))
        pixels.photos([0, 1])
        assert "torch" not in sys.modules, "torch imported"
        """
    )
    assert done.returncode == 0, done.stderr


def test_each_file_is_hashed_once_until_it_changes(tmp_path: Path, monkeypatch) -> None:
    calls: list[Path] = []
    real = fingerprints.md5_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fingerprints, "md5_file", counting)
    model = tmp_path / "models" / "stage-1.pth"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    first = fingerprints.file_tags("output", [model], tmp_path)
    again = fingerprints.file_tags("input", [model], tmp_path)  # the next stage reads it
    assert len(calls) == 1
    assert first["output.models/stage-1.pth"] == again["input.models/stage-1.pth"] == real(model)
    replaced = tmp_path / "new.pth"  # outputs are written beside and renamed: a new inode
    replaced.write_bytes(b"weights, retrained")
    replaced.replace(model)
    changed = fingerprints.file_tags("input", [model], tmp_path)
    assert len(calls) == 2 and changed["input.models/stage-1.pth"] == real(model)


def test_pt2_and_onnx_copies_come_from_one_trace(tmp_path: Path, monkeypatch) -> None:
    from pets import export
    from pets.model import create_body, create_cnn

    traces = []
    real = export.trace
    monkeypatch.setattr(export, "trace", lambda *a: traces.append(1) or real(*a))
    torch.manual_seed(0)
    model = create_cnn(create_body("resnet18", "none"), 3).eval()
    example = torch.randn(2, 3, 48, 48)
    program = export.trace(model, example)
    export.to_program(model, example, tmp_path / export.PROGRAM, {"format": 1}, program)
    export.to_onnx(model, example, tmp_path / export.ONNX, program)
    assert len(traces) == 1
    images = torch.randn(3, 3, 48, 48)  # another batch size than the trace's
    with torch.no_grad():
        reference = model(images).numpy()
        copy = torch.export.load(str(tmp_path / export.PROGRAM)).module()(images).numpy()
    assert abs(copy - reference).max() <= 1e-4
    assert abs(export.run_onnx(tmp_path / export.ONNX, images) - reference).max() <= 1e-4


def test_the_split_counts_imports_in_main_as_start_up() -> None:
    clock = Clock()
    clock.marks = {"process": 0.0, "main": 0.5, "opened": 1.0, "work": 1.5, "worked": 5.5}
    clock.marks["closed"] = 6.0
    clock.spent_at = {
        "work": {"imports": 0.3},
        "worked": {"imports": 1.3, "logging": 0.5, "fingerprints": 0.2},
    }
    clock.spent = {"imports": 1.3, "logging": 0.5, "fingerprints": 0.4}
    split = clock.split()
    assert split["startup_s"] == 1.0 + 1.0  # to opening the run, plus main's own imports
    assert split["work_s"] == 4.0 - 1.0 - 0.5
    assert split["recording_s"] == 0.5 + 0.5 + 0.5  # opening, closing, the stage's own calls
    assert split["fingerprints_s"] == 0.4


def test_a_stage_process_writes_where_its_seconds_went(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("tracking:\n  enabled: false\n")
    done = _python(
        f"""
        from pathlib import Path
        from pets.stage import StageSpec, run_stage
        def body(params, tracker):
            import json  # an import in the stage's work counts as start-up
        run_stage(StageSpec(name="probe", params=()), Path({str(tmp_path / "params.yaml")!r}),
                  body)
        """,
        PETS_TIMINGS=str(tmp_path / "timings"),
    )
    assert done.returncode == 0, done.stderr
    assert "probe: done in" in done.stderr and "(start-up " in done.stderr
    record = json.loads((tmp_path / "timings" / "probe.json").read_text())
    assert record["stage"] == "probe" and record["status"] == "FINISHED"
    parts = ("startup_s", "work_s", "recording_s", "fingerprints_s", "total_s")
    assert all(record[name] >= 0 for name in parts)
    assert record["fingerprints_s"] == 0  # tracking off: no file is hashed
