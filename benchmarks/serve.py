"""Benchmark: `pets serve` against `pets predict` and its Predictor, on the same model and photos.

resnet34 with the lesson's head for 37 classes at size 224 (untrained weights: speed does not
depend on them), JPEGs at Pets' sizes. Measured in one run:

- `pets predict MODEL PHOTO` as a command, one photo: what classifying a photo costs without a
  server (starting Python, importing torch, loading the model, then the photo);
- the Predictor in this process: one photo per call (median latency), and every photo in batches
  of `--bs` (throughput);
- `pets serve` (its defaults: batches of up to 32, a 5 ms collection window), through HTTP on
  127.0.0.1 with the raw JPEG as the body: one client sending one photo at a time (median
  latency), then `--clients` concurrent clients (throughput; the server batches their photos,
  and the mean batch size it reports is printed).

The Predictor and the server are measured turn about, so a machine busy with other work slows
both alike. On a CPU shared with other work, torch's intra-op threads spin against each other
and the other processes (a resnet34 photo took 2 s on the main thread here, 0.09 s with one
thread); `--torch-threads 1` gives both sides one thread (OMP_NUM_THREADS for the server).

Runs on the GPU when there is one (both sides).

    python benchmarks/serve.py [--photos 256] [--clients 32] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import report, tool_env, write_export  # benchmarks/common.py


def command_side(model: Path, photo: Path, repeats: int, env: dict[str, str]) -> dict[str, float]:
    """`pets predict MODEL PHOTO` as a fresh process: median wall seconds."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pets.cli", "predict", str(model), str(photo)],
            capture_output=True,
            text=True,
            env=env,
        )
        seconds.append(time.perf_counter() - start)
        if done.returncode:
            sys.exit(f"pets predict failed:\n{done.stderr[-3000:]}")
    return {"latency_s": statistics.median(seconds), "photos_per_s": 1 / statistics.median(seconds)}


def start_server(model: Path, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`pets serve MODEL --port 0` in its own process; its address once it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pets.cli", "serve", str(model), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(300)
    found = re.search(r"http://\S+/", lines[0] if lines else "")
    if not found:
        process.kill()
        sys.exit(f"pets serve did not start:\n{log.read_text()[-3000:]}")
    return process, found.group()


async def interleaved(
    model: Path, url: str, photos: list[Path], repeats: int, bs: int, clients: int, rounds: int
) -> dict[str, dict[str, float]]:
    """The Predictor in this process and the server over HTTP, measured turn about (so a busy
    machine slows both alike): single-photo latency (medians), then throughput in `rounds`
    (medians): the Predictor on every photo in batches of `bs`, the server on every photo sent
    by `clients` concurrent clients."""
    import aiohttp
    import torch

    from pets.predict import Predictor

    single, batched = Predictor(model, bs=1), Predictor(model, bs=bs)
    list(single.predict(photos[:2]))  # warm-up
    list(batched.predict(photos[:bs]))
    bodies = [p.read_bytes() for p in photos]
    timings: dict[str, list[float]] = {k: [] for k in ("pl", "sl", "pt", "st", "batch")}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes) -> None:
            async with session.post(url + "predict", data=body) as answer:
                if answer.status != 200:
                    raise RuntimeError(
                        f"pets serve answered {answer.status}: {await answer.text()}"
                    )
                await answer.read()

        async def stats() -> dict[str, Any]:
            async with session.get(url + "stats") as answer:
                return await answer.json()

        for body in bodies[:2]:  # warm-up
            await one(body)
        for path, body in zip(photos[:repeats], bodies[:repeats], strict=True):
            start = time.perf_counter()
            list(single.predict([path]))
            timings["pl"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await one(body)
            timings["sl"].append(time.perf_counter() - start)
        for _ in range(rounds):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            list(batched.predict(photos))
            timings["pt"].append(len(photos) / (time.perf_counter() - start))
            before, queue = await stats(), list(bodies)

            async def client(queue: list[bytes] = queue) -> None:
                while queue:
                    await one(queue.pop())

            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            timings["st"].append(len(photos) / (time.perf_counter() - start))
            after = await stats()
            calls = after["model_calls"] - before["model_calls"]
            timings["batch"].append((after["photos"] - before["photos"]) / max(1, calls))
    median = {key: statistics.median(values) for key, values in timings.items()}
    return {
        "predictor single": {"latency_s": median["pl"]},
        "predictor batched": {"photos_per_s": median["pt"]},
        "server single": {"latency_s": median["sl"]},
        "server concurrent": {"photos_per_s": median["st"], "mean_batch": median["batch"]},
    }


def main() -> None:
    """Generate photos, time every side, print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20, help="single-photo calls timed")
    parser.add_argument(
        "--bs", type=int, default=32, help="the Predictor's batch (serve's default)"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--commands", type=int, default=3, help="`pets predict` processes timed")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (median)")
    parser.add_argument(
        "--torch-threads", type=int, help="torch's intra-op threads, both sides (default: torch's)"
    )
    parser.add_argument("--quick", action="store_true", help="a few photos (CI)")
    args = parser.parse_args()
    if args.quick:
        args.photos, args.repeats, args.bs, args.clients, args.commands = 16, 3, 8, 8, 1
        args.rounds = 1
    from pets.synthetic import make_pets

    env = tool_env()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="pets-serve-") as tmp:
        folder = Path(tmp)
        make_pets(folder / "pets", -(-args.photos // 37), classes=37, seed=0)
        photos = sorted((folder / "pets" / "images").glob("*.jpg"))[: args.photos]
        model = write_export(folder / "export")
        command = command_side(model, photos[0], args.commands, env)
        process, url = start_server(model, folder / "serve.log", env)
        try:
            got = asyncio.run(
                interleaved(model, url, photos, args.repeats, args.bs, args.clients, args.rounds)
            )
        finally:
            process.terminate()
            process.wait(timeout=60)
    base_latency = got["predictor single"]["latency_s"]
    base_throughput = got["predictor batched"]["photos_per_s"]
    rows: list[dict[str, Any]] = [
        {"way": "pets predict, a process per photo", **command},
        {"way": "Predictor, one photo per call", **got["predictor single"]},
        {"way": f"Predictor, batches of {args.bs}", **got["predictor batched"]},
        {"way": "pets serve, one client", **got["server single"]},
        {"way": f"pets serve, {args.clients} clients", **got["server concurrent"]},
    ]
    for row in rows:
        if "latency_s" in row:
            row["latency_over_predictor"] = row["latency_s"] / base_latency
        if "photos_per_s" in row:
            row["throughput_over_predictor"] = row["photos_per_s"] / base_throughput
    report(
        "serve",
        rows,
        {
            "photos": len(photos),
            "bs": args.bs,
            "clients": args.clients,
            "arch": "resnet34",
            "size": 224,
            "torch_threads": args.torch_threads,
        },
    )


if __name__ == "__main__":
    main()
