"""Benchmark: using the model on photos, ours (`pets predict`'s Predictor on an export folder)
against fastai 2.8's `learn.predict` (one photo) and `get_preds` on a test DataLoader (many).

Both load resnet34 with the lesson's head for 37 classes at size 224, decode JPEGs at Pets'
sizes from disk and return class probabilities. Single-photo latency is the median of repeated
calls; throughput is photos per second over a folder in batches of 64. Runs on the GPU when
there is one (ours; fastai's side follows its own device choice).

    python benchmarks/predict.py [--photos 256] [--fastai-python .bench-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report, write_export  # benchmarks/common.py

HERE = Path(__file__).resolve().parent


def ours(folder: Path, photos: list[Path], repeats: int, bs: int) -> dict[str, float]:
    """Latency and throughput of our Predictor."""
    import torch

    from pets.predict import Predictor

    write_export(folder / "export")
    single = Predictor(folder / "export", bs=1)
    list(single.predict(photos[:2]))  # warm-up
    latencies = []
    for path in photos[:repeats]:
        start = time.perf_counter()
        list(single.predict([path]))
        latencies.append(time.perf_counter() - start)
    batched = Predictor(folder / "export", bs=bs)
    list(batched.predict(photos[:bs]))  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    list(batched.predict(photos))
    return {
        "latency_s": statistics.median(latencies),
        "photos_per_s": len(photos) / (time.perf_counter() - start),
    }


def main() -> None:
    """Generate photos, time both, print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20, help="single-photo calls timed")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--fastai-python", type=Path)
    parser.add_argument("--quick", action="store_true", help="a few photos (CI)")
    args = parser.parse_args()
    if args.quick:
        args.photos, args.repeats, args.bs = 16, 3, 8
    from pets.synthetic import make_pets

    with tempfile.TemporaryDirectory(prefix="pets-predict-") as tmp:
        folder = Path(tmp)
        per_class = -(-args.photos // 37)
        make_pets(folder / "pets", per_class, classes=37, seed=0)
        photos = sorted((folder / "pets" / "images").glob("*.jpg"))[: args.photos]
        results = {"ours": ours(folder, photos, args.repeats, args.bs)}
        if args.fastai_python:
            done = subprocess.run(
                [
                    str(args.fastai_python),
                    str(HERE / "fastai_predict.py"),
                    str(folder / "pets" / "images"),
                    str(args.photos),
                    str(args.repeats),
                    str(args.bs),
                ],
                capture_output=True,
                text=True,
            )
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"fastai failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            results["fastai"] = json.loads(lines[-1].removeprefix("RESULT "))
    rows = [
        {
            "predictor": name,
            **numbers,
            "latency_ours_over_this": results["ours"]["latency_s"] / numbers["latency_s"],
            "throughput_this_over_ours": numbers["photos_per_s"] / results["ours"]["photos_per_s"],
        }
        for name, numbers in results.items()
    ]
    report("predict", rows, {"photos": args.photos, "bs": args.bs, "arch": "resnet34", "size": 224})


if __name__ == "__main__":
    main()
