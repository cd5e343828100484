"""`pets serve MODEL`: the model behind a page where a person drops or picks photos and sees each
one with its top classes, and behind `POST /predict` for programs.

The server library is aiohttp (`aiohttp.web`, aio-libs): it is already installed (MLflow depends
on it), it is asyncio-native, so any number of waiting requests share one batch without a thread
each, and its streaming multipart reader lets an upload be read into memory under our own size
limit. (aiohttp's `request.post()`, like Starlette's form parser, spools uploaded files to
temporary files on disk; this server reads every part itself and never writes one.) Its HTTP and
WebSocket clients also drive the tests and the headless browser.

Endpoints:

    GET  /          the page (self-contained: nothing is fetched from the network)
    POST /predict   multipart/form-data (one or more files, any field names) or the raw bytes
                    of one photo as the body (`?name=` names it); answers
                    {"photos": [{"name", "predictions": [{"class", "probability"}, ...]},
                    ...]}, or {"error": "..."} with 400 (empty upload,
                    malformed request), 413 (over the size limit, or too many pixels), 415 (not
                    an image) or 422 (an image that does not decode); a request with one bad
                    photo is refused whole, naming it
    GET  /stats     how many model calls (batches) ran, and their sizes

Photos from concurrent requests are batched: the first photo waits up to the collection window
(`--window-ms`) for others, up to `--bs`, and the batch takes one model call on a thread of its
own, so the server keeps answering while the model runs.
"""

from __future__ import annotations

import asyncio
import errno
import html
import io
import ipaddress
import json
import logging
import signal
import sys
import warnings
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError

from pets.errors import PetsError
from pets.images import MAX_PIXELS, load_onto_canvas
from pets.predict import Predictor

MB = 1_000_000
# What the page and `POST /predict` decode; Pillow's other readers (EPS via Ghostscript, ICNS,
# ...) have no place behind a network port.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
CHUNK = 1 << 16
NAME_LENGTH = 200  # longest upload name echoed back
log = logging.getLogger("pets.serve")


@dataclass(frozen=True)
class Upload:
    """One uploaded photo, in memory: the name the client gave it and its bytes."""

    name: str
    data: bytes


class Refused(Exception):
    """A request refused: the HTTP status and a one-line message for the person or program."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(upload: Upload, presize: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The upload decoded exactly as `pets predict` decodes a file (upright RGB, long side
    `presize`, at the top-left of a `presize` square canvas): (canvas, (height, width)).
    Raises `Refused` naming the upload when it is empty or not a usable image."""
    if not upload.data:
        raise Refused(400, f"{upload.name}: empty upload")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(upload.data), formats=ACCEPTED_FORMATS):
                pass  # identifies the format and checks the pixel count from the header
        canvas = np.zeros((presize, presize, 3), np.uint8)
        size = load_onto_canvas(io.BytesIO(upload.data), canvas)
    except UnidentifiedImageError:
        raise Refused(
            415, f"{upload.name}: not an image (accepted: {', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Refused(413, f"{upload.name}: too many pixels (limit {MAX_PIXELS:,})") from None
    except Exception as exc:  # whatever a decoder raises, this photo does not decode
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise Refused(422, f"{upload.name}: does not decode ({reason})") from None
    return canvas, size


def _too_big(max_bytes: int) -> Refused:
    return Refused(
        413, f"upload over the size limit of {max_bytes / MB:g} MB (pets serve --max-mb)"
    )


async def _read_limited(read: Callable[[], Awaitable[bytes]], total: int, max_bytes: int) -> bytes:
    """Chunks from `read()` (b"" at the end) while the request's running total, `total` bytes
    before this part, stays within `max_bytes`."""
    data = bytearray()
    while chunk := await read():
        total += len(chunk)
        if total > max_bytes:
            raise _too_big(max_bytes)
        data += chunk
    return bytes(data)


async def read_uploads(request: web.Request, max_bytes: int) -> list[Upload]:
    """The photos a request carries, read into memory: every part of a multipart form (named by
    its file name, else its field name) or the whole body. Raises `Refused` for a request over
    `max_bytes` (declared or counted), an empty one, or a malformed form."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_big(max_bytes)  # refused before reading; aiohttp drains the rest
    if not request.content_type.startswith("multipart/"):
        name = request.query.get("name", "upload")[:NAME_LENGTH]
        data = await _read_limited(lambda: request.content.read(CHUNK), 0, max_bytes)
        if not data:
            raise Refused(
                400,
                "empty upload: send a photo as multipart/form-data or as the request body",
            )
        return [Upload(name, data)]
    try:
        reader = await request.multipart()
        uploads: list[Upload] = []
        total = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise Refused(400, "nested multipart forms are not accepted")
            name = (part.filename or part.name or f"part {len(uploads) + 1}")[:NAME_LENGTH]
            data = await _read_limited(lambda p=part: p.read_chunk(CHUNK), total, max_bytes)
            total += len(data)
            uploads.append(Upload(name, data))
    except (ValueError, AssertionError) as exc:  # what aiohttp's reader raises on a bad form
        raise Refused(400, f"malformed multipart form ({exc})") from None
    if not uploads:
        raise Refused(400, "the form holds no photo")
    return uploads


@dataclass
class _Waiting:
    canvas: np.ndarray
    size: tuple[int, int]
    future: asyncio.Future[list[tuple[str, float]]]


@dataclass
class BatchStats:
    """The model calls so far: how many, how many photos, and the latest batches' sizes."""

    model_calls: int = 0
    photos: int = 0
    largest_batch: int = 0
    recent_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))

    def as_json(self) -> dict[str, object]:
        """For `GET /stats`."""
        return {
            "model_calls": self.model_calls,
            "photos": self.photos,
            "largest_batch": self.largest_batch,
            "batch_sizes": list(self.recent_sizes),
        }


class Batcher:
    """Photos from concurrent requests, classified together: the first waits up to `window_s`
    for others (at most `max_batch` in all), then the batch takes one model call on the model's
    own thread. Photos that arrive while the model runs form the next batch."""

    def __init__(self, predictor: Predictor, max_batch: int, window_s: float) -> None:
        self.predictor, self.max_batch, self.window_s = predictor, max_batch, window_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pets-model")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start collecting (in the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop collecting; photos still waiting fail."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            waiting = self._queue.get_nowait()
            if not waiting.future.done():
                waiting.future.set_exception(RuntimeError("the server is stopping"))
        self._thread.shutdown(wait=True)

    async def classify(
        self, decoded: list[tuple[np.ndarray, tuple[int, int]]]
    ) -> list[list[tuple[str, float]]]:
        """Top classes with probabilities for each decoded photo, in order."""
        loop = asyncio.get_running_loop()
        futures = []
        for canvas, size in decoded:
            future: asyncio.Future[list[tuple[str, float]]] = loop.create_future()
            self._queue.put_nowait(_Waiting(canvas, size, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    def top(self, canvases: list[np.ndarray], sizes: list[tuple[int, int]]) -> list:
        """One model call: the top classes of each canvas (`Predictor.probabilities`, then
        top-k, as `Predictor.predict` does)."""
        probs = self.predictor.probabilities(
            torch.from_numpy(np.stack(canvases)), torch.tensor(sizes, dtype=torch.float32)
        )
        values, indices = probs.topk(self.predictor.top_k, dim=1)
        classes = self.predictor.classes
        return [
            [(classes[c], float(v)) for v, c in zip(row_v, row_c, strict=True)]
            for row_v, row_c in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    async def _collect(self) -> list[_Waiting]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [w for w in await self._collect() if not w.future.done()]
            if not batch:
                continue  # every requester went away
            try:
                tops = await loop.run_in_executor(
                    self._thread, self.top, [w.canvas for w in batch], [w.size for w in batch]
                )
            except Exception as exc:  # the model failed (out of memory, ...): these photos fail
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(exc)
                continue
            self.stats.model_calls += 1
            self.stats.photos += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            self.stats.recent_sizes.append(len(batch))
            for waiting, top in zip(batch, tops, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(top)


@dataclass
class Settings:
    """How the server treats requests."""

    max_bytes: int = 20 * MB  # largest request body
    bs: int = 32  # most photos per model call
    window_s: float = 0.005  # how long the first photo of a batch waits for others
    threads: int = 4  # decoding threads


_SERVER = web.AppKey("server", object)


@dataclass
class _Server:
    predictor: Predictor
    settings: Settings
    about: dict[str, object]
    batcher: Batcher
    decoders: ThreadPoolExecutor


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _page(request: web.Request) -> web.Response:
    server: _Server = request.app[_SERVER]  # type: ignore[assignment]
    return web.Response(
        text=page_html(server.about, server.settings.max_bytes),
        content_type="text/html",
        headers={
            # The page may talk to this server and show the photos it holds; nothing else.
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; img-src blob: data:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


async def _predict(request: web.Request) -> web.Response:
    server: _Server = request.app[_SERVER]  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    presize = server.predictor.spec.presize
    try:
        uploads = await read_uploads(request, server.settings.max_bytes)
        decoded = await asyncio.gather(
            *(loop.run_in_executor(server.decoders, decode_upload, u, presize) for u in uploads)
        )
    except Refused as refused:
        return _error(refused.status, str(refused))
    try:
        tops = await server.batcher.classify(list(decoded))
    except Exception as exc:  # reported to the client; the server goes on
        log.exception("the model failed")
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return _error(500, f"the model failed ({reason})")
    return web.json_response(
        {
            "photos": [
                {
                    "name": upload.name,
                    "predictions": [{"class": c, "probability": p} for c, p in top],
                }
                for upload, top in zip(uploads, tops, strict=True)
            ]
        }
    )


async def _stats(request: web.Request) -> web.Response:
    server: _Server = request.app[_SERVER]  # type: ignore[assignment]
    return web.json_response({**server.batcher.stats.as_json(), "model": server.about})


def make_app(predictor: Predictor, settings: Settings, source: str) -> web.Application:
    """The web application for `predictor` (routes, batcher and decoding threads, started and
    stopped with the app)."""
    about = {
        "source": source,
        "arch": predictor.spec.arch,
        "classes": len(predictor.classes),
        "top_k": predictor.top_k,
        "tta": predictor.tta,
        "device": str(predictor.compute.device),
    }
    app = web.Application()
    server = _Server(
        predictor,
        settings,
        about,
        Batcher(predictor, settings.bs, settings.window_s),
        ThreadPoolExecutor(max(1, settings.threads), thread_name_prefix="pets-decode"),
    )
    app[_SERVER] = server

    async def lifetime(app: web.Application):  # type: ignore[no-untyped-def]
        server.batcher.start()
        yield
        await server.batcher.stop()
        server.decoders.shutdown(wait=True)

    app.cleanup_ctx.append(lifetime)
    app.router.add_get("/", _page)
    app.router.add_post("/predict", _predict)
    app.router.add_get("/stats", _stats)
    return app


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _run(app: web.Application, host: str, port: int, ready: Callable[[str], None]) -> None:
    access = logging.getLogger("pets.serve.access")
    runner = web.AppRunner(app, access_log=access, access_log_format='%a "%r" %s %Tf s')
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise PetsError(f"port {port} on {host} is in use; pick another with --port") from None
        raise PetsError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    ready(f"http://{shown}:{bound[1]}/")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(
    model: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: Settings | None = None,
    top_k: int = 3,
    tta: bool = False,
    device: str = "auto",
) -> None:
    """Load `model` (an export folder or a .pth checkpoint) once and serve it on `host:port`
    until SIGINT or SIGTERM. Prints the address when ready; a model that does not load, or a
    port in use, raises `PetsError` before anything is served."""
    settings = settings or Settings()
    try:
        predictor = Predictor(model, device=device, bs=settings.bs, tta=tta, top_k=top_k)
        presize = predictor.spec.presize
        predictor.probabilities(  # warm-up, so the first person does not wait for it
            torch.zeros(1, presize, presize, 3, dtype=torch.uint8),
            torch.tensor([[presize, presize]], dtype=torch.float32),
        )
    except PetsError:
        raise
    except Exception as exc:  # a spec whose values are damaged: still one line, not a traceback
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PetsError(f"{model}: does not load ({type(exc).__name__}: {reason})") from None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pets serve: %(message)s"))
    log.addHandler(handler)  # and so the access log, pets.serve.access
    log.setLevel(logging.INFO)
    if not is_loopback(host):
        print(
            f"pets serve: warning: listening on {host}, so other machines can reach it; there "
            "is no login: anyone who can reach this port can use the model",
            file=sys.stderr,
        )
    app = make_app(predictor, settings, str(model))

    def ready(url: str) -> None:
        print(
            f"pets serve: {url}  {predictor.spec.arch}, {len(predictor.classes)} classes, "
            f"from {model}, on {predictor.compute.device} (Ctrl-C stops)",
            flush=True,
        )

    asyncio.run(_run(app, host, port, ready))


def page_html(about: dict[str, object], max_bytes: int) -> str:
    """The page: pick or drop photos, see each with its top classes (self-contained)."""
    config = json.dumps({"maxBytes": max_bytes, "maxMB": max_bytes / MB})
    title = html.escape(
        f"{about['arch']} · {about['classes']} classes · top {about['top_k']}"
        + (" · TTA" if about["tta"] else "")
    )
    return PAGE.replace("{{about}}", title).replace("{{config}}", config.replace("<", "\\u003c"))


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pets: which breed is this?</title>
<link rel="icon" href="data:,">
<style>
  :root { font-family: system-ui, sans-serif; color: #222; background: #fafafa; }
  body { max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
  h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
  .about { color: #666; margin-top: 0; }
  #drop { display: block; border: 2px dashed #999; border-radius: 12px; padding: 2.5rem;
          text-align: center; background: #fff; cursor: pointer; }
  #drop.over { border-color: #2a7; background: #efe; }
  #drop input { display: block; margin: 1rem auto 0; }
  #results { list-style: none; padding: 0; display: grid; gap: 1rem;
             grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); }
  .photo { background: #fff; border-radius: 10px; box-shadow: 0 1px 4px #0002; padding: 0.8rem; }
  .photo img { width: 100%; max-height: 14rem; object-fit: contain; background: #eee;
               border-radius: 6px; }
  .photo .name { font-size: 0.85rem; color: #555; overflow-wrap: anywhere; margin: 0.4rem 0; }
  .row { display: grid; grid-template-columns: 1fr 6rem 3.5rem; gap: 0.4rem;
         align-items: center; font-size: 0.95rem; }
  .row:first-child .class { font-weight: 600; }
  .bar { background: #eee; height: 0.6rem; border-radius: 3px; overflow: hidden; }
  .bar i { display: block; height: 100%; background: #2a7; }
  .pct { text-align: right; font-variant-numeric: tabular-nums; }
  .error { color: #b00; }
  .pending { color: #888; }
</style>
</head>
<body data-done="0" data-errors="0">
<h1>Which breed is this?</h1>
<p class="about">{{about}}</p>
<label id="drop">Drop photos here, or pick them
  <input id="pick" type="file" accept="image/*" multiple>
</label>
<ol id="results"></ol>
<script>
"use strict";
const config = {{config}};
const results = document.getElementById("results");
const drop = document.getElementById("drop");
const pick = document.getElementById("pick");

function count(key) {
  document.body.dataset[key] = String(Number(document.body.dataset[key]) + 1);
}

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

function show(card, verdict, predictions) {
  verdict.replaceChildren();
  for (const p of predictions) {
    const row = element("div", "row");
    row.dataset.class = p.class;
    row.dataset.probability = String(p.probability);
    row.append(element("span", "class", p.class.replaceAll("_", " ")));
    const bar = element("span", "bar");
    const fill = element("i");
    fill.style.width = (100 * p.probability).toFixed(1) + "%";
    bar.append(fill);
    row.append(bar, element("span", "pct", (100 * p.probability).toFixed(1) + "%"));
    verdict.append(row);
  }
  card.dataset.state = "done";
  count("done");
}

function fail(card, verdict, message) {
  verdict.replaceChildren(element("p", "error", message));
  card.dataset.state = "error";
  count("errors");
}

async function classify(file) {
  const card = element("li", "photo");
  card.dataset.name = file.name;
  card.dataset.state = "pending";
  const image = element("img");
  image.alt = file.name;
  image.src = URL.createObjectURL(file);
  image.onerror = () => image.remove();
  const verdict = element("div", "verdict");
  verdict.append(element("p", "pending", "classifying…"));
  card.append(image, element("p", "name", file.name), verdict);
  results.prepend(card);
  if (file.size > config.maxBytes) {
    return fail(card, verdict, `${file.name}: over the size limit of ${config.maxMB} MB`);
  }
  const form = new FormData();
  form.append("photo", file, file.name);
  try {
    const answer = await fetch("predict", { method: "POST", body: form });
    const body = await answer.json().catch(() => ({}));
    if (!answer.ok) {
      return fail(card, verdict, body.error || `${answer.status} ${answer.statusText}`);
    }
    show(card, verdict, body.photos[0].predictions);
  } catch (error) {
    fail(card, verdict, `the server did not answer (${error.message})`);
  }
}

function take(files) {
  for (const file of files) classify(file);
}

pick.addEventListener("change", () => { take(pick.files); pick.value = ""; });
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  take(event.dataTransfer.files);
});
// A photo dropped anywhere else must not make the browser navigate away to it.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());
</script>
</body>
</html>
"""
