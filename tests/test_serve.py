"""`pets serve`: a real server on 127.0.0.1 in its own process, checked in headless Chromium
(pick and drop photos, read the results off the page) and with an HTTP client (results equal
`Predictor`'s, concurrent photos share model calls, bad uploads are refused and the server goes
on, nothing is written, startup errors are one line)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pets.export import SPEC, WEIGHTS
from pets.predict import Predictor
from pets.serve import is_loopback
from pets.synthetic import make_pets
from tests.browser import DevTools
from tests.helpers import SMALL_SIZES, tool_env, write_export

CLASSES = ["Abyssinian", "Bengal", "Birman", "Bombay"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder: resnet18 with the lesson's head for 4 classes at size 48, seeded
    random weights (what is served matters here, not how good it is)."""
    return write_export(tmp_path_factory.mktemp("model") / "export", CLASSES)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight generated JPEGs, two per breed."""
    root = tmp_path_factory.mktemp("photos")
    make_pets(root, 2, classes=len(CLASSES), seed=3, sizes=SMALL_SIZES)
    return sorted((root / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def expected(model: Path, photos: list[Path]) -> dict[str, list[tuple[str, float]]]:
    """What `Predictor` (and so `pets predict`) says of each photo, by file name."""
    predictor = Predictor(model, device="cpu", top_k=3)
    return {Path(p.path).name: p.top for p in predictor.predict(photos)}


@dataclass
class Running:
    """A `pets serve` process: its address, the folder it runs in (its cwd and $TMPDIR), and
    its stderr so far."""

    process: subprocess.Popen[str]
    url: str
    folder: Path
    log: Path

    def stderr(self) -> str:
        """What the server wrote to stderr."""
        return self.log.read_text()

    def stop(self) -> int:
        """SIGTERM, then its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def _serve(model: Path, where: Path, *args: str) -> tuple[subprocess.Popen[str], str, Path]:
    """Start `pets serve` in an empty folder (with an empty $TMPDIR inside it); its first
    stdout line, or "" if it exited or said nothing for two minutes."""
    (where / "run" / "tmp").mkdir(parents=True)
    log = where / "stderr.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "pets.cli", "serve", str(model), "--device", "cpu", *args],
        cwd=where / "run",
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=tool_env(TMPDIR=str(where / "run" / "tmp")),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    return process, lines[0] if lines else "", log


@pytest.fixture
def start(model: Path, tmp_path: Path) -> Iterator:
    """Start a server with extra flags; every one started is stopped afterwards (SIGTERM,
    exit status 0)."""
    started: list[Running] = []

    def starting(*args: str) -> Running:
        process, line, log = _serve(model, tmp_path / f"server{len(started)}", *args)
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert found, f"no address in {line!r}; stderr: {log.read_text()[-3000:]}"
        started.append(Running(process, found.group(1), log.parent / "run", log))
        return started[-1]

    yield starting
    for server in started:
        assert server.stop() == 0, server.stderr()[-3000:]


async def _post(
    url: str,
    body: bytes | None = None,
    files: list[tuple[str, bytes]] | None = None,
    query: str = "",
) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        data: Any = body
        if files is not None:
            data = aiohttp.FormData()
            for name, content in files:
                data.add_field("photo", content, filename=name)
        async with session.post(f"{url}predict{query}", data=data) as answer:
            return answer.status, await answer.json()


def post(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """POST /predict: status and JSON answer."""
    return asyncio.run(_post(url, **kwargs))


def get_json(url: str) -> dict[str, Any]:
    """GET a JSON endpoint."""

    async def get() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(url) as answer:
            return await answer.json()

    return asyncio.run(get())


def _tops(answer: dict[str, Any]) -> list[list[tuple[str, float]]]:
    return [[(p["class"], p["probability"]) for p in ph["predictions"]] for ph in answer["photos"]]


def _same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [c for c, _ in got] == [c for c, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-5)


def test_answers_equal_the_predictors(start, photos: list[Path], expected: dict) -> None:
    server = start()
    for photo in photos[:3]:
        status, answer = post(server.url, body=photo.read_bytes(), query=f"?name={photo.name}")
        assert status == 200 and answer["photos"][0]["name"] == photo.name
        _same(_tops(answer)[0], expected[photo.name])
    status, answer = post(server.url, files=[(p.name, p.read_bytes()) for p in photos])
    assert status == 200 and [p["name"] for p in answer["photos"]] == [p.name for p in photos]
    for photo, top in zip(photos, _tops(answer), strict=True):
        _same(top, expected[photo.name])


def test_concurrent_photos_share_model_calls(start, photos: list[Path], expected: dict) -> None:
    # A window long enough that the batch fills (4 photos) before it closes: 8 concurrent
    # requests take exactly two model calls, whatever the machine's speed.
    server = start("--bs", "4", "--window-ms", "60000")

    async def together() -> list[tuple[int, dict[str, Any]]]:
        return await asyncio.gather(
            *(_post(server.url, body=p.read_bytes(), query=f"?name={p.name}") for p in photos)
        )

    answers = asyncio.run(together())
    assert [status for status, _ in answers] == [200] * len(photos)
    for photo, (_, answer) in zip(photos, answers, strict=True):
        _same(_tops(answer)[0], expected[photo.name])
    stats = get_json(server.url + "stats")
    assert stats["model_calls"] == 2 and stats["batch_sizes"] == [4, 4]
    assert stats["photos"] == 8 and stats["model"]["arch"] == "resnet18"


def test_bad_uploads_are_refused_and_the_server_goes_on(start, photos: list[Path]) -> None:
    server = start()
    photo = photos[0].read_bytes()
    too_big = bytes(50 * 1_000_000)  # 50 MB, the default limit being 20
    cases = [
        ({"body": b"just some text"}, 415, "upload: not an image"),
        ({"files": [("notes.jpg", b"just some text")]}, 415, "notes.jpg: not an image"),
        ({"body": b""}, 400, "empty upload"),
        ({"files": [("empty.jpg", b"")]}, 400, "empty.jpg: empty upload"),
        ({"body": too_big}, 413, "over the size limit of 20 MB"),
        ({"files": [("big.jpg", too_big)]}, 413, "over the size limit of 20 MB"),
        ({"files": [("half.jpg", photo[: len(photo) // 2])]}, 422, "half.jpg: does not decode"),
        (
            {"files": [("good.jpg", photo), ("bad.png", b"\x89PNG no")]},
            415,
            "bad.png: not an image",
        ),
    ]
    for kwargs, status, message in cases:
        got, answer = post(server.url, **kwargs)
        assert (got, set(answer)) == (status, {"error"}), (kwargs.keys(), answer)
        assert message in answer["error"] and "\n" not in answer["error"]
    assert post(server.url, body=photo)[0] == 200  # still serving
    assert get_json(server.url + "stats")["photos"] == 1  # refused photos never reached the model

    async def wrong_method() -> int:
        async with aiohttp.ClientSession() as session, session.get(server.url + "predict") as r:
            return r.status

    assert asyncio.run(wrong_method()) == 405
    assert "Traceback" not in server.stderr()
    assert sorted(server.folder.rglob("*")) == [server.folder / "tmp"]  # nothing written


def test_startup_errors_are_one_line(model: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        process, line, log = _serve(model, tmp_path / "busy", "--port", port)
        assert process.wait(timeout=60) == 1 and line == ""
        assert log.read_text().splitlines() == [
            f"pets serve: error: port {port} on 127.0.0.1 is in use; pick another with --port"
        ]
        process, _, log = _serve(model, tmp_path / "exposed", "--host", "0.0.0.0", "--port", port)
        assert process.wait(timeout=60) == 1
        warning, error = log.read_text().splitlines()
        assert warning.startswith("pets serve: warning: listening on 0.0.0.0, so other machines")
        assert error.startswith(f"pets serve: error: port {port} on 0.0.0.0 is in use")
    damaged = tmp_path / "damaged"
    shutil.copytree(model, damaged)
    (damaged / SPEC).write_text('{"format": "pets.export/1", "arch": ')
    process, line, log = _serve(damaged, tmp_path / "spec")
    assert process.wait(timeout=60) == 1 and line == ""
    (only,) = log.read_text().splitlines()  # the spec's own message may change; one line
    assert only.startswith(f"pets serve: error: {damaged / SPEC}: ")
    spec = json.loads((model / SPEC).read_text())
    (damaged / SPEC).write_text(json.dumps({**spec, "classes": 4, "presize": "big"}))
    process, _, log = _serve(damaged, tmp_path / "values")
    assert process.wait(timeout=60) == 1
    (only,) = log.read_text().splitlines()
    assert only.startswith(f"pets serve: error: {damaged}")
    shutil.copy(model / SPEC, damaged / SPEC)
    (damaged / WEIGHTS).write_bytes((model / WEIGHTS).read_bytes()[:1000])
    process, _, log = _serve(damaged, tmp_path / "weights")
    assert process.wait(timeout=60) == 1
    (only,) = log.read_text().splitlines()
    assert only.startswith(f"pets serve: error: {damaged / WEIGHTS}: cannot be read")


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert not is_loopback("example.org")


PAGE_STATE = """Array.from(document.querySelectorAll("#results .photo")).map((card) => ({
  name: card.dataset.name,
  state: card.dataset.state,
  shown: card.querySelector("img") ? card.querySelector("img").naturalWidth : 0,
  rows: Array.from(card.querySelectorAll(".row")).map(
    (row) => [row.dataset.class, Number(row.dataset.probability)]),
  error: card.querySelector(".error") ? card.querySelector(".error").textContent : "",
}))"""

DROP = """(() => {
  const bytes = Uint8Array.from(atob("%s"), (c) => c.charCodeAt(0));
  const dropped = new DataTransfer();
  dropped.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
  const target = document.getElementById("drop");
  target.dispatchEvent(new DragEvent("drop", { dataTransfer: dropped, bubbles: true,
                                               cancelable: true }));
  return true;
})()"""


def test_the_page_in_chromium(
    start, photos: list[Path], expected: dict, chromium: str, tmp_path: Path
) -> None:
    server = start()
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")

    async def drive() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
        async with DevTools(chromium, tmp_path / "profile") as page:
            await page.send("Log.enable")
            await page.open(server.url)
            html = await page.evaluate("document.documentElement.outerHTML")
            await page.set_files("#pick", [photos[0], photos[1], notes])
            await page.wait_for("document.body.dataset.done === '2'")
            await page.wait_for("document.body.dataset.errors === '1'")
            await page.evaluate(DROP % base64.b64encode(photos[2].read_bytes()).decode())
            await page.wait_for("document.body.dataset.done === '3'")
            await page.wait_for("Array.from(document.images).every((i) => i.complete)")
            await page.screenshot(tmp_path / "page.png")
            return await page.evaluate(PAGE_STATE), page.events, html

    cards, events, html = asyncio.run(drive())
    by_name = {card["name"]: card for card in cards}
    assert set(by_name) == {photos[0].name, photos[1].name, "notes.jpg", "dropped.jpg"}
    for name, photo in [(photos[0].name, photos[0]), (photos[1].name, photos[1])]:
        card = by_name[name]
        assert card["state"] == "done" and card["shown"] > 0 and not card["error"]
        _same([tuple(row) for row in card["rows"]], expected[photo.name])
    _same([tuple(row) for row in by_name["dropped.jpg"]["rows"]], expected[photos[2].name])
    assert by_name["notes.jpg"]["state"] == "error" and by_name["notes.jpg"]["shown"] == 0
    assert by_name["notes.jpg"]["error"].startswith("notes.jpg: not an image")
    assert not [e for e in events if e["method"] == "Runtime.exceptionThrown"]
    logged = [e["params"]["entry"] for e in events if e["method"] == "Log.entryAdded"]
    # The only error the browser logs is the refused upload's 415; no load was blocked or failed.
    assert [e for e in logged if e["level"] == "error" and "415" not in e["text"]] == []
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from the network
    assert (tmp_path / "page.png").stat().st_size > 5_000
    assert json.loads(json.dumps(cards))  # plain data came back
