"""A data set from a URL list, fetched from a server the test starts on 127.0.0.1: real photos,
broken files, a web page, a slow answer, redirects, 404s, a flaky 503, a duplicate, a photo
past the size cap."""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pets.config import Params
from pets.errors import PetsError
from pets.stages import download, labels
from pets.synthetic import make_photo
from pets.url_list import read_url_list


def _jpeg(index: int, classes: int = 2) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(index)
    make_photo(index % classes, classes, rng, (64, 48)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png(index: int) -> bytes:
    buffer = io.BytesIO()
    make_photo(0, 2, np.random.default_rng(100 + index), (40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Photos(http.server.BaseHTTPRequestHandler):
    """Routes: /cat/<n>.jpg, /dog/<n>.jpg (photos), /png (a PNG), /broken.jpg (a cut JPEG),
    /page.jpg (HTML), /slow.jpg (answers after the client gave up), /moved (302 to a photo),
    /flaky.jpg (503 once, then a photo), /big.jpg (past the cap), anything else 404."""

    hits: Counter[str]
    release: threading.Event

    def do_GET(self) -> None:
        path = self.path
        type(self).hits[path] += 1
        kind, body, status = "image/jpeg", b"", 200
        if path.startswith(("/cat/", "/dog/")):
            number = int(path.rsplit("/", 1)[1].split(".")[0])
            body = _jpeg(number * 2 + (path.startswith("/dog/")))
        elif path == "/dup.jpg":
            body = _jpeg(2)  # the same bytes as /cat/1.jpg
        elif path == "/png":
            kind, body = "image/png", _png(0)
        elif path == "/broken.jpg":
            body = _jpeg(40)[:300]
        elif path == "/page.jpg":
            kind, body = "text/html", b"<html>a login page</html>"
        elif path == "/slow.jpg":
            type(self).release.wait(10)  # the client times out long before
            body = _jpeg(41)
        elif path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/dog/9.jpg")
            self.end_headers()
            return
        elif path == "/flaky.jpg":
            status, body = (503, b"busy") if type(self).hits[path] == 1 else (200, _jpeg(43))
        elif path == "/big.jpg":
            body = _jpeg(44) + b"\0" * 200_000
        else:
            status, kind, body = 404, "text/html", b"not found"
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the slow route)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Photos]]]:
    handler = type("Handler", (_Photos,), {"hits": Counter(), "release": threading.Event()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    handler.release.set()
    httpd.shutdown()
    httpd.server_close()


FAST = {"timeout": 0.5, "retries": 1, "backoff": 0.01, "workers": 4, "max_photo_bytes": 100_000}


def _params(url: Path) -> Params:
    return Params.model_validate(
        {
            "data": {"url": str(url), **FAST},
            "labels": {"method": "folder", "folder": "", "train_folder": ""},
        }
    )


def test_a_url_list_becomes_a_data_set(tmp_path: Path, server, monkeypatch) -> None:
    base, handler = server
    monkeypatch.setenv("PETS_PHOTOS", str(tmp_path / "store"))
    rows = [f"{base}/cat/{n}.jpg,cat" for n in range(1, 5)]
    rows += [f"{base}/dog/{n}.jpg,dog" for n in range(1, 4)]
    rows += [
        f"{base}/moved,dog",
        f"{base}/png,dog",
        f"{base}/flaky.jpg,dog",
        f"{base}/missing.jpg,cat",
        f"{base}/broken.jpg,cat",
        f"{base}/page.jpg,cat",
        f"{base}/slow.jpg,dog",
        f"{base}/big.jpg,dog",
        f"{base}/dup.jpg,cat",
    ]
    listing = tmp_path / "urls.csv"
    listing.write_text("url,label\n" + "\n".join(rows) + "\n")
    params = _params(listing)
    dataset, manifest = tmp_path / "data" / "dataset", tmp_path / "data" / "dataset.json"
    download.main(params, dataset=dataset, manifest=manifest)

    saved = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file())
    assert saved == [
        "cat/1.jpg", "cat/2.jpg", "cat/3.jpg", "cat/4.jpg",
        "dog/1.jpg", "dog/2.jpg", "dog/3.jpg", "dog/4.jpg", "dog/5.png", "dog/6.jpg",
    ]  # fmt: skip
    assert (dataset / "dog/4.jpg").read_bytes() == _jpeg(19)  # the redirect's target
    record = json.loads(manifest.read_text())
    reasons = {f["url"].removeprefix(base): f["reason"] for f in record["failures"]}
    assert reasons["/missing.jpg"] == "HTTP 404 Not Found"
    assert reasons["/broken.jpg"].startswith("does not decode")
    assert reasons["/page.jpg"] == "not an image (content type text/html)"
    assert reasons["/slow.jpg"] == "timed out (2 tries, 0.5 s each)"
    assert reasons["/big.jpg"].startswith("too big")
    assert reasons["/dup.jpg"] == f"duplicate of {base}/cat/1.jpg"
    assert len(reasons) == 6 and record["files"] == 10 and record["listed"] == 16
    assert handler.hits["/flaky.jpg"] == 2 and handler.hits["/missing.jpg"] == 1  # 4xx: no retry
    assert next(f for f in record["failures"] if f["url"].endswith("/big.jpg"))["where"] == (
        f"{listing} row 16"
    )

    # The failures reach reports/data_quality.json through the labels stage.
    quality = tmp_path / "reports" / "data_quality.json"
    labels.main(
        params,
        dataset=dataset,
        manifest=manifest,
        split=tmp_path / "data" / "split.csv",
        classes=tmp_path / "data" / "classes.json",
        quality=quality,
    )
    assert json.loads(quality.read_text())["download_failures"] == record["failures"]

    # A rerun fetches only what is missing: the photos come from the store.
    before = Counter(handler.hits)
    download.main(params, dataset=dataset, manifest=manifest)
    fetched_again = {path for path in handler.hits if handler.hits[path] > before[path]}
    assert fetched_again <= {"/missing.jpg", "/broken.jpg", "/page.jpg", "/slow.jpg", "/big.jpg"}
    assert "/cat/1.jpg" not in fetched_again and "/flaky.jpg" not in fetched_again
    assert json.loads(manifest.read_text())["files"] == 10


def test_a_folder_of_label_lists(tmp_path: Path, server, monkeypatch) -> None:
    base, _ = server
    monkeypatch.setenv("PETS_PHOTOS", str(tmp_path / "store"))
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "cat.txt").write_text(f"# my cats\n{base}/cat/1.jpg\n\n{base}/cat/2.jpg\n")
    (lists / "dog.txt").write_text(f"{base}/dog/1.jpg\n{base}/dog/2.jpg\n")
    (lists / "desktop.ini").write_text("junk")
    dataset = tmp_path / "dataset"
    download.main(_params(lists), dataset=dataset, manifest=tmp_path / "dataset.json")
    assert sorted(p.name for p in (dataset / "cat").iterdir()) == ["1.jpg", "2.jpg"]
    assert [item.where for item in read_url_list(lists)][1] == f"{lists / 'cat.txt'} line 4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("url,label\n", r"urls.csv lists no URL"),
        ("link,class\nhttp://x/1.jpg,cat\n", r"urls.csv needs a header row with columns url,label"),
        ("url,label\nhttp://x/1.jpg,cat\nhttp://x/2.jpg,a/b\n", r"urls.csv row 3: label 'a/b'"),
        ("url,label\n,cat\n", r"urls.csv row 2 has no URL"),
        ("url,label\nftp://x/1.jpg,cat\n", r"urls.csv lists no http\(s\) URL"),
    ],
)
def test_bad_url_lists_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    listing = tmp_path / "urls.csv"
    listing.write_text(text)
    dataset, manifest = tmp_path / "dataset", tmp_path / "dataset.json"
    with pytest.raises(PetsError, match=message):
        download.main(_params(listing), dataset=dataset, manifest=manifest)
    assert not dataset.exists() and not manifest.exists()


def test_a_list_with_no_fetchable_url_fails(tmp_path: Path, server, monkeypatch) -> None:
    base, _ = server
    monkeypatch.setenv("PETS_PHOTOS", str(tmp_path / "store"))
    listing = tmp_path / "urls.csv"
    listing.write_text(f"url,label\n{base}/gone.jpg,cat\n{base}/page.jpg,dog\n")
    with pytest.raises(PetsError, match=r"no photo could be fetched .* row 2: HTTP 404"):
        download.main(_params(listing), dataset=tmp_path / "d", manifest=tmp_path / "d.json")
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.json").exists()
