"""The lesson's untar_data: download once, verify, extract safely, leave nothing half-made."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pets.archive import archive_name, extract, fetch, local_path
from pets.errors import PetsError


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_single_top_folder_becomes_the_dataset(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "pets.tgz",
        [_file("oxford-iiit-pet/images/a_1.jpg"), _file("oxford-iiit-pet/annotations/list.txt")],
    )
    target = tmp_path / "data" / "dataset"
    assert extract(archive, target) == "oxford-iiit-pet"
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "annotations/list.txt",
        "images/a_1.jpg",
    ]
    assert not list(target.parent.glob(".*"))  # no temporary folder left behind


def test_several_top_entries_keep_their_layout(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "photos.tar.gz", [_file("train/cat/1.jpg"), _file("valid/cat/2.jpg")])
    target = tmp_path / "dataset"
    assert extract(archive, target) is None
    assert (target / "train/cat/1.jpg").exists() and (target / "valid/cat/2.jpg").exists()


def test_zip_archives_extract(tmp_path: Path) -> None:
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("pets/images/a_1.jpg", b"x")
    assert extract(archive, tmp_path / "dataset") == "pets"
    assert (tmp_path / "dataset/images/a_1.jpg").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_file("../evil.txt"), "outside the data folder"),
        (_file("pets/../../evil.txt"), "outside the data folder"),
        (_file("/etc/evil.txt"), "absolute path"),
        (_link("pets/link", "../../outside", tarfile.SYMTYPE), "outside the data folder"),
        (_link("pets/abs", "/etc/passwd", tarfile.SYMTYPE), "absolute link target"),
        (_link("pets/hard", "../outside", tarfile.LNKTYPE), "outside the data folder"),
        (_link("pets/dev", "", tarfile.CHRTYPE), "not a file or folder"),
    ],
)
def test_escaping_members_are_refused(tmp_path: Path, member: tuple, reason: str) -> None:
    archive = _tar(tmp_path / "bad.tgz", [_file("pets/ok.txt"), member])
    target = tmp_path / "data" / "dataset"
    with pytest.raises(PetsError, match=reason):
        extract(archive, target)
    assert not target.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "outside").exists()
    assert not list((tmp_path / "data").glob(".*"))


def test_zip_traversal_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../evil.txt", b"x")
    with pytest.raises(PetsError, match="outside the data folder"):
        extract(archive, tmp_path / "data" / "dataset")


def test_truncated_and_non_archives(tmp_path: Path) -> None:
    good = _tar(
        tmp_path / "good.tgz", [_file(f"pets/{i}.bin", bytes(range(256)) * 400) for i in range(20)]
    )
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PetsError, match="truncated or corrupt"):
        extract(truncated, tmp_path / "a")
    text = tmp_path / "notes.tgz"
    text.write_text("this is not an archive\n" * 50)
    with pytest.raises(PetsError, match="is not a .tgz, .tar.gz, .tar or .zip archive"):
        extract(text, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_url_forms(tmp_path: Path) -> None:
    assert archive_name("https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz") == (
        "oxford-iiit-pet.tgz"
    )
    assert local_path(f"file://{tmp_path}/a.tgz") == tmp_path / "a.tgz"
    assert local_path("data/a.tgz") == Path("data/a.tgz")
    assert local_path("https://example.com/a.tgz") is None
    with pytest.raises(PetsError, match="unsupported scheme"):
        local_path("ftp://example.com/a.tgz")


def test_local_archives_are_verified_in_place(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "pets.tgz", [_file("pets/a.txt")])
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    assert fetch(f"file://{archive}", md5).path == archive
    assert fetch(str(archive), None).md5 == md5
    with pytest.raises(PetsError, match=f"data.md5: .* has md5 {md5}, expected 0{{32}}"):
        fetch(str(archive), "0" * 32)
    assert archive.exists()  # the user's own file is never deleted
    with pytest.raises(PetsError, match="does not exist"):
        fetch(str(tmp_path / "missing.tgz"), None)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload, honouring `Range: bytes=N-`; counts requests."""

    payload = b""
    requests: list[str | None] = []
    cut_after: int | None = None  # send only this many bytes (a dropped connection)

    def do_GET(self) -> None:
        start = 0
        header = self.headers.get("Range")
        type(self).requests.append(header)
        if header:
            start = int(header.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            body = body[: self.cut_after]
            type(self).cut_after = None
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, type[_RangeHandler]]]:
    handler = type("Handler", (_RangeHandler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/pets.tgz", handler
    httpd.shutdown()


def test_download_once_then_reuse(tmp_path: Path, server, monkeypatch) -> None:
    url, handler = server
    archive = _tar(tmp_path / "src.tgz", [_file("pets/a.txt", b"a" * 5000)])
    handler.payload = archive.read_bytes()
    md5 = hashlib.md5(handler.payload).hexdigest()
    monkeypatch.setenv("PETS_ARCHIVES", str(tmp_path / "store"))
    first = fetch(url, md5)
    assert first.path.read_bytes() == handler.payload and first.md5 == md5
    second = fetch(url, md5)
    assert second.path == first.path and len(handler.requests) == 1


def test_interrupted_download_resumes(tmp_path: Path, server, monkeypatch) -> None:
    url, handler = server
    handler.payload = bytes(range(256)) * 4000
    handler.cut_after = 300_000
    monkeypatch.setenv("PETS_ARCHIVES", str(tmp_path / "store"))
    with pytest.raises(
        PetsError, match="stopped at 300,000 of 1,024,000 bytes; run the stage again"
    ):
        fetch(url, None)
    assert not list((tmp_path / "store").glob("*.tgz"))  # only the .part file
    fetched = fetch(url, hashlib.md5(handler.payload).hexdigest())
    assert fetched.path.read_bytes() == handler.payload
    assert handler.requests == [None, "bytes=300000-"]


def test_bad_download_is_not_kept(tmp_path: Path, server, monkeypatch) -> None:
    url, handler = server
    handler.payload = b"corrupted payload"
    monkeypatch.setenv("PETS_ARCHIVES", str(tmp_path / "store"))
    with pytest.raises(PetsError, match="data.md5"):
        fetch(url, "0" * 32)
    assert list((tmp_path / "store").iterdir()) == []


def test_unreachable_url_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PETS_ARCHIVES", str(tmp_path / "store"))
    with pytest.raises(PetsError, match="download it yourself and set data.url"):
        fetch("http://127.0.0.1:9/pets.tgz", None, timeout=5)
