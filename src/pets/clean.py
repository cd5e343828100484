"""`pets clean MODEL`: fastai's `ImageClassifierCleaner` as a web page on 127.0.0.1.

The page shows the photos of one class, or the validation photos with the largest loss (the
lesson's `plot_top_losses`), each with its label and, for validation photos, the model's
prediction and probabilities (from `reports/<model>/predictions.csv`: no model is run). A
control on each photo keeps its label, relabels it or drops it; every choice is written at once
to the corrections file (`labels.corrections`), an input of the `labels` stage, so the next
`snakemake` / `dvc repro` retrains exactly what it changes."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from pets.config import load_params
from pets.errors import PetsError
from pets.files import atomic_path, read_json
from pets.labels import read_corrections, read_split
from pets.paths import CLASSES, DATASET, MODELS, PREDICTIONS, SPLIT, for_model

DROP = ""  # the label of a row that drops its photo


@dataclass
class Cleaner:
    """What the page shows and where choices go."""

    dataset: Path
    corrections: Path
    classes: list[str]
    items: list[dict[str, Any]]  # one per labelled photo; validation ones with predictions

    def choices(self) -> dict[str, str]:
        """Each photo's current choice in the corrections file: a label, or DROP."""
        return {p: (label or DROP) for p, (label, _) in read_corrections(self.corrections).items()}

    def choose(self, photo: str, choice: str | None) -> dict[str, str]:
        """Record `choice` for `photo` (a label to relabel it, DROP to drop it, None to keep
        its label: its row goes) and rewrite the corrections file; returns every choice."""
        if photo not in self.paths:
            raise PetsError(f"no photo {photo!r} in the split")
        if choice not in (None, DROP, *self.classes):
            raise PetsError(f"{choice!r} is not one of the classes")
        rows = self.choices()
        if choice is None:
            rows.pop(photo, None)
        else:
            rows[photo] = choice
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(sorted(rows.items()))
        self.corrections.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.corrections) as temporary:  # never a half-written file
            temporary.write_text(buffer.getvalue())
        return rows

    @property
    def paths(self) -> set[str]:
        """The photos the page may show and correct."""
        return {item["path"] for item in self.items}


def load_cleaner(project: Path, model: str) -> Cleaner:
    """The labelled photos of `project` with `model`'s predictions for the validation ones;
    `labels.corrections` must name the corrections file."""
    import pandas as pd

    if model not in MODELS:
        raise PetsError(f"{model!r} is not a model; the models are {', '.join(MODELS)}")
    params = load_params(project / "params.yaml")
    if not params.labels.corrections:
        raise PetsError(
            "labels.corrections is not set in params.yaml: set it (e.g. `corrections: "
            "corrections.csv` under labels) so the labels stage reads the choices made here"
        )
    predictions_path = project / for_model(PREDICTIONS, model)
    if not predictions_path.is_file():
        raise PetsError(f"{predictions_path}: not found; run the pipeline (get_preds) first")
    split = read_split(project / SPLIT)
    predictions = pd.read_csv(predictions_path, keep_default_na=False).set_index("path")
    tops = [c for c in predictions.columns if c.startswith("top")]
    items = []
    for photo, label, is_valid in split.itertuples(index=False):
        item: dict[str, Any] = {"path": photo, "label": label, "valid": bool(is_valid)}
        if photo in predictions.index:
            row = predictions.loc[photo]
            item |= {
                "actual": row["actual"],  # the label the model was trained and scored with
                "predicted": row["predicted"],
                "loss": float(row["loss"]),
                "p_actual": float(row["p_actual"]),
                "p_predicted": float(row["p_predicted"]),
                "top": [[row[c], float(row[f"p_{c}"])] for c in tops],
            }
        items.append(item)
    return Cleaner(
        dataset=project / DATASET,
        corrections=project / params.labels.corrections,
        classes=list(read_json(project / CLASSES)),
        items=items,
    )


def make_app(cleaner: Cleaner, model: str) -> web.Application:
    """The page, its data, the photos, and `POST /choose`."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=page_html(model), content_type="text/html")

    async def items(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "classes": cleaner.classes,
                "items": cleaner.items,
                "choices": cleaner.choices(),
                "corrections": str(cleaner.corrections),
            }
        )

    async def photo(request: web.Request) -> web.StreamResponse:
        name = request.query.get("path", "")
        if name not in cleaner.paths:  # only photos of the split: no path leaves the data set
            return web.json_response({"error": "no such photo"}, status=404)
        return web.FileResponse(cleaner.dataset / name)

    async def choose(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            rows = cleaner.choose(str(body.get("path", "")), body.get("choice"))
        except (ValueError, AttributeError):
            return web.json_response({"error": "send JSON {path, choice}"}, status=400)
        except PetsError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"choices": rows})

    app = web.Application()
    app.add_routes(
        [
            web.get("/", page),
            web.get("/items", items),
            web.get("/photo", photo),
            web.post("/choose", choose),
        ]
    )
    return app


async def _run(app: web.Application, host: str, port: int, ready: Callable[[str], None]) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise PetsError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    bound = runner.addresses[0]
    ready(f"http://{bound[0]}:{bound[1]}/")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def clean(project: Path, model: str, *, host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve the cleaner for `model`'s predictions in `project` on `host:port` until SIGINT
    or SIGTERM; prints the address when ready."""
    cleaner = load_cleaner(project, model)

    def ready(url: str) -> None:
        print(
            f"pets clean: {url}  {len(cleaner.items)} photos, {len(cleaner.classes)} classes; "
            f"choices go to {cleaner.corrections} (Ctrl-C stops)",
            flush=True,
        )

    asyncio.run(_run(make_app(cleaner, model), host, port, ready))


def page_html(model: str) -> str:
    """The cleaner page (self-contained: no files from elsewhere)."""
    return PAGE.replace("{{model}}", html.escape(model)).replace("{{drop}}", json.dumps(DROP))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pets clean: {{model}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; }
#cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ccc; padding: 8px; width: 230px; font-size: 13px; }
.card img { width: 230px; height: 170px; object-fit: contain; background: #eee; }
.wrong { color: #b00; } .status { color: #070; min-height: 1.2em; }
.changed { border-color: #06c; box-shadow: 0 0 0 2px #06c; }
</style></head><body>
<h1>Clean the labels: {{model}}</h1>
<p>Show <select id="view"></select> &nbsp; Choices are saved at once to <code id="file"></code>;
rerun <code>snakemake</code> or <code>dvc repro</code> to retrain on them.</p>
<div id="cards"></div>
<script>
const DROP = {{drop}};
let data = null;
const pct = p => (100 * p).toFixed(1) + "%";
const esc = t => String(t).replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`);
function card(item) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.path = item.path;
  const img = document.createElement("img");
  img.src = "photo?path=" + encodeURIComponent(item.path);
  img.alt = item.path;
  div.append(img);
  const lines = [`<b>${esc(item.path)}</b>`, `label: <b class="label">${esc(item.label)}</b>` +
    (item.valid ? " (valid)" : " (train)")];
  if (item.predicted !== undefined) {
    const cls = item.predicted === item.actual ? "" : "wrong";
    lines.push(`predicted: <b class="predicted ${cls}">${esc(item.predicted)}</b> ` +
      `(${pct(item.p_predicted)}); p(${esc(item.actual)}) ${pct(item.p_actual)}; ` +
      `loss ${item.loss.toFixed(3)}`);
    lines.push("top: " + item.top.map(([c, p]) => `${esc(c)} ${pct(p)}`).join(", "));
  } else {
    lines.push("<i>no prediction (a training photo)</i>");
  }
  const text = document.createElement("div");
  text.innerHTML = lines.join("<br>");
  div.append(text);
  const choice = document.createElement("select");
  choice.className = "choice";
  choice.add(new Option(`keep ${item.label}`, "keep"));
  choice.add(new Option("drop this photo", "drop"));
  for (const c of data.classes) if (c !== item.label) choice.add(new Option(`relabel: ${c}`, c));
  const current = data.choices[item.path];
  choice.value = current === undefined ? "keep" : current === DROP ? "drop" : current;
  if (current !== undefined) div.classList.add("changed");
  const status = document.createElement("div");
  status.className = "status";
  choice.addEventListener("change", async () => {
    const value = choice.value === "keep" ? null : choice.value === "drop" ? DROP : choice.value;
    status.textContent = "saving...";
    const answer = await fetch("choose", {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({path: item.path, choice: value})});
    const body = await answer.json();
    if (!answer.ok) { status.textContent = "error: " + body.error; return; }
    data.choices = body.choices;
    div.classList.toggle("changed", value !== null);
    status.textContent = "saved";
  });
  div.append(choice, status);
  return div;
}
function show() {
  const view = document.getElementById("view").value;
  let items = data.items;
  if (view === "top losses") {
    items = items.filter(i => i.loss !== undefined).sort((a, b) => b.loss - a.loss ||
      a.path.localeCompare(b.path));
  } else {
    items = items.filter(i => i.label === view);
  }
  document.getElementById("cards").replaceChildren(...items.map(card));
}
async function start() {
  data = await (await fetch("items")).json();
  document.getElementById("file").textContent = data.corrections;
  const view = document.getElementById("view");
  for (const name of ["top losses", ...data.classes]) view.add(new Option(name, name));
  view.addEventListener("change", show);
  show();
  document.body.dataset.ready = "1";
}
start();
</script></body></html>
"""
