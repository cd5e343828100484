"""The `pets` command: compare runs, use the model, write dvc.yaml, make test data.

`pets predict MODEL PHOTOS...` classifies photos; `pets serve MODEL` serves a page to try the
model in a browser and `POST /predict` for programs; `pets runs` prints the latest MLflow run of
every stage with its key params and error rate; `pets ui` opens MLflow's UI on the runs;
`pets clean MODEL` serves a page to relabel or drop photos, writing `labels.corrections`;
`pets dag write|check|inputs` writes dvc.yaml from the stage specs, checks it, or rewrites the
stages' inputs records; `pets fake-data` writes a Pets-like data set."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pets.config import load_params
from pets.errors import PetsError
from pets.paths import MODELS

if TYPE_CHECKING:
    import pandas as pd

# The params worth a column in `pets runs`, per stage.
KEY_PARAMS = {
    "labels": ("labels.method", "labels.valid_pct", "seed"),
    "cache": ("cache.size",),
    "train_frozen": (
        "train_frozen.arch",
        "train_frozen.size",
        "train_frozen.bs",
        "train_frozen.epochs",
        "train_frozen.lr",
    ),
    "lr_find": ("lr_find.num_it", "lr_find.bs"),
    "finetune": ("finetune.epochs", "finetune.lr", "finetune.bs"),
    "train_resnet50": (
        "train_resnet50.arch",
        "train_resnet50.size",
        "train_resnet50.bs",
        "train_resnet50.epochs",
        "train_resnet50.lr",
    ),
    "get_preds": ("get_preds.bs",),
    "interpret": ("interpret.k", "interpret.min_val"),
}
ERROR_METRICS = ("metrics.final_error_rate", "metrics.error_rate")


def runs_table(project: Path, every: bool = False, limit: int = 50) -> pd.DataFrame:
    """Stage runs from `mlflow.search_runs`: the latest per stage, or every run newest first."""
    import mlflow
    import pandas as pd

    from pets.recorder import wait_recorded
    from pets.tracking import client_for, mlflow_uri, tracking_uri

    wait_recorded(project)  # the runs of stages that just ended
    client_for(project)  # quiets MLflow's logging
    experiment = load_params(project / "params.yaml").tracking.experiment
    with mlflow_uri(tracking_uri(project)):
        found = mlflow.search_runs(
            experiment_names=[experiment],
            filter_string="tags.`pets.kind` = 'stage'",
            order_by=["attributes.start_time DESC"],
            max_results=5000,
        )
    if found.empty:
        return pd.DataFrame()
    if not every:
        found = found.drop_duplicates("tags.pets.stage", keep="first")
    rows = []
    for run in found.head(limit).to_dict("records"):
        stage = run["tags.pets.stage"]
        errors = [run.get(metric) for metric in ERROR_METRICS]
        params = [
            f"{key.split('.')[-1]}={run.get('params.' + key)}"
            for key in KEY_PARAMS.get(stage, ())
            if run.get("params." + key) is not None
        ]
        error = next((e for e in errors if e is not None and e == e), None)
        rows.append(
            {
                "stage": stage,
                "started": run["start_time"].strftime("%Y-%m-%d %H:%M"),
                "status": run["status"],
                "error_rate": "" if error is None else f"{error:.4f}",
                "params": " ".join(params),
                "run": run["run_id"][:8],
            }
        )
    return pd.DataFrame(rows)


def printable(text: str) -> str:
    """`text` safe for a terminal line: control characters (escape sequences, newlines, ...)
    written as `\\x..` escapes; everything else (spaces, `$`, `%`, quotes, any script) as is."""
    import unicodedata

    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
        else ch
        for ch in text
    )


def print_predictions(args: argparse.Namespace) -> int:
    """Predict and print in the chosen format; returns how many photos could not be read."""
    import csv

    from pets.predict import Predictor, photo_paths

    predictor = Predictor(
        args.model, device=args.device, bs=args.bs, tta=args.tta, top_k=args.top_k
    )
    results = list(predictor.predict(photo_paths(args.photos)))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "path": r.path,
                        "error": r.error or None,
                        "predictions": [{"class": c, "probability": p} for c, p in r.top],
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        ranks = range(1, predictor.top_k + 1)
        writer.writerow(["path", *[f"{k}{i}" for i in ranks for k in ("top", "p_top")], "error"])
        for r in results:
            cells = [v for c, p in r.top for v in (c, f"{p:.6f}")]
            writer.writerow([r.path, *cells, *[""] * (2 * predictor.top_k - len(cells)), r.error])
    else:
        for r in results:
            shown = (
                "  ".join(f"{printable(c)} {p:.3f}" for c, p in r.top)
                if r.top
                else f"error: {printable(r.error)}"
            )
            print(f"{printable(r.path)}  {shown}")
    for r in results:
        if r.error:
            print(f"pets predict: {printable(r.error)}", file=sys.stderr)
    return sum(1 for r in results if r.error)


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    """`pets --help`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dag"]:  # DVC runs `pets dag inputs` first on every repro: keep it light
        from pets import dag

        dag.main(argv[1:])
        return
    parser = argparse.ArgumentParser(
        prog="pets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", type=Path, default=Path("."), help="project folder")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "dag",
        help="dvc.yaml and the inputs records from the stage specs: `pets dag --help`",
        add_help=False,
    )
    runs = commands.add_parser("runs", help="latest MLflow run of every stage")
    runs.add_argument("--all", action="store_true", help="every stage run, newest first")
    runs.add_argument("--limit", type=int, default=50, help="rows at most")
    predict = commands.add_parser(
        "predict",
        help="classify photos with a trained model",
        description="Top classes of each photo, from an export folder (models/export) or a "
        "training checkpoint (models/stage-2.pth). Unreadable photos are reported and skipped; "
        "the exit status is 1 if any was.",
    )
    predict.add_argument(
        "model", type=Path, help="export folder, .pt2, .pth checkpoint or models:/NAME/VERSION"
    )
    predict.add_argument("photos", type=Path, nargs="+", help="photos or folders of photos")
    predict.add_argument(
        "--top-k", type=positive, default=3, help="classes shown per photo (default: 3)"
    )
    predict.add_argument(
        "--tta", action="store_true", help="average the centre crop, its mirror and both end crops"
    )
    predict.add_argument("--bs", type=positive, default=32, help="photos per batch")
    predict.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: the GPU when there is one",
    )
    form = predict.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="JSON output")
    form.add_argument("--csv", action="store_true", help="CSV output")
    serve = commands.add_parser(
        "serve",
        help="a page to try the model in a browser, and POST /predict for programs",
        description="Load the model once and serve, on 127.0.0.1 unless --host says otherwise, "
        "a page where photos dropped or picked are shown with their top classes, and POST "
        "/predict (multipart/form-data, or the raw bytes of one photo) answering JSON. "
        "Concurrent photos are classified in batches. Uploads stay in memory.",
    )
    serve.add_argument(
        "model", type=Path, help="export folder, .pt2, .pth checkpoint or models:/NAME/VERSION"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)",
    )
    serve.add_argument(
        "--port", type=port_number, default=8000, help="port (default: 8000; 0: any free one)"
    )
    serve.add_argument(
        "--max-mb",
        type=positive_number,
        default=20.0,
        help="largest upload per request, in MB of 10^6 bytes (default: 20)",
    )
    serve.add_argument(
        "--top-k", type=positive, default=3, help="classes shown per photo (default: 3)"
    )
    serve.add_argument("--bs", type=positive, default=32, help="most photos per model call")
    serve.add_argument(
        "--window-ms",
        type=float,
        default=5.0,
        help="how long a photo waits for others to share its model call (default: 5)",
    )
    serve.add_argument(
        "--tta", action="store_true", help="average the centre crop, its mirror and both end crops"
    )
    serve.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: the GPU when there is one",
    )
    clean = commands.add_parser(
        "clean",
        help="a page to relabel or drop photos (fastai's ImageClassifierCleaner)",
        description="Serve, on 127.0.0.1, a page showing the photos of a class or the top "
        "losses of MODEL's validation predictions (reports/MODEL/predictions.csv), each with "
        "its label, prediction and probabilities, and a control to keep, relabel or drop it. "
        "Each choice is written at once to the labels.corrections file; the next snakemake or "
        "dvc repro retrains on it.",
    )
    clean.add_argument("model", choices=MODELS, help="whose predictions to show")
    clean.add_argument(
        "--port", type=port_number, default=8001, help="port (default: 8001; 0: any free one)"
    )
    ui = commands.add_parser(
        "ui",
        help="MLflow's UI on this project's runs",
        description="Start `mlflow ui` on the project's tracking store (mlflow.db) and print "
        "the address of the experiment's runs table; Ctrl-C stops it. With "
        "$MLFLOW_TRACKING_URI set to a server, print that server's address instead.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    ui.add_argument("--port", type=port_number, default=5000, help="port (default: 5000)")
    fake = commands.add_parser("fake-data", help="write a Pets-like data set (and .tgz)")
    fake.add_argument("root", type=Path)
    fake.add_argument("--per-class", type=int, default=200)
    fake.add_argument("--classes", type=int, default=37)
    fake.add_argument("--seed", type=int, default=0)
    fake.add_argument("--tgz", type=Path)
    args, rest = parser.parse_known_args(argv)
    project = args.project.resolve()
    if args.command == "dag":  # `pets --project P dag ...`
        from pets import dag

        dag.main([*rest, "--project", str(project)])
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command in ("predict", "serve") and "MLFLOW_TRACKING_URI" not in os.environ:
        from pets.tracking import tracking_uri

        # `models:/pets/3` resolves in the project's own store, as the stages logged it.
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(project)
    try:
        if args.command == "runs":
            table = runs_table(project, args.all, args.limit)
            print(table.to_string(index=False) if len(table) else "no stage runs tracked yet")
        elif args.command == "predict":
            failed = print_predictions(args)
            if failed:
                print(f"pets predict: {failed} photos could not be read", file=sys.stderr)
                sys.exit(1)
        elif args.command == "ui":
            from pets.ui import ui

            ui(project, host=args.host, port=args.port)
        elif args.command == "clean":
            from pets.clean import clean

            clean(project, args.model, port=args.port)
        elif args.command == "serve":
            from pets.serve import MB, Settings, serve

            if not args.window_ms >= 0:
                parser.error("--window-ms: must be 0 or more")
            settings = Settings(int(args.max_mb * MB), args.bs, args.window_ms / 1000)
            serve(
                args.model,
                host=args.host,
                port=args.port,
                settings=settings,
                top_k=args.top_k,
                tta=args.tta,
                device=args.device,
            )
        else:
            from pets.synthetic import make_pets, pack

            pairs = make_pets(args.root, args.per_class, args.classes, args.seed)
            print(f"{args.root}: {len(pairs)} photos")
            if args.tgz:
                print(pack(args.root, args.tgz))
    except PetsError as exc:
        print(f"pets {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
