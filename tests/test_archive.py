"""The lesson's untar_data: download once, verify, extract safely, leave nothing half-made."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pets import archive as archive_module
from pets.archive import (
    Fetched,
    archive_name,
    dataset_manifest,
    extract,
    fetch,
    local_path,
    redact_url,
)
from pets.config import DataParams
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
        (_link("pets/link", "../../outside", tarfile.SYMTYPE), "links are not allowed"),
        (_link("pets/abs", "/etc/passwd", tarfile.SYMTYPE), "links are not allowed"),
        (_link("pets/hard", "../outside", tarfile.LNKTYPE), "links are not allowed"),
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


def test_md5_belongs_to_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pets.archive import KNOWN_ARCHIVES, expected_md5
    from pets.config import PETS_URL

    assert KNOWN_ARCHIVES[PETS_URL].md5 == "e4db5c768afd933bb91f5f594d7417a4"
    assert KNOWN_ARCHIVES[PETS_URL].size == 811_706_944
    assert expected_md5(PETS_URL, "auto") == "e4db5c768afd933bb91f5f594d7417a4"
    assert expected_md5("https://example.com/mine.tgz", "auto") is None
    assert expected_md5(PETS_URL, None) is None
    assert expected_md5("https://example.com/mine.tgz", "1" * 32) == "1" * 32
    archive = _tar(tmp_path / "mine.tgz", [_file("mine/a.txt")])
    assert fetch(str(archive), "auto").path == archive  # your own archive: no md5 needed
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(PetsError, match=f"if this is the file you mean, set data.md5: {md5}"):
        fetch(str(archive), "2" * 32)
    # A lesson URL under `auto` is checked against the registry, and says how to get past it.
    monkeypatch.setitem(KNOWN_ARCHIVES, str(archive), KNOWN_ARCHIVES[PETS_URL])
    with pytest.raises(PetsError, match=r"the known md5 of this lesson archive.*run the stage"):
        fetch(str(archive), "auto")


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


def _no_data_filter(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    """Run as on Python 3.10 before 3.10.12 and 3.11 before 3.11.4: no `tarfile.data_filter`."""
    if not present and hasattr(tarfile, "data_filter"):
        monkeypatch.delattr(tarfile, "data_filter")


@pytest.mark.parametrize("data_filter", [True, False], ids=["with-filter", "without-filter"])
@pytest.mark.parametrize(
    "members",
    [
        # The chain that escaped without data_filter: a -> ., a/b -> .., then a file under b/c/.
        [
            _link("a", ".", tarfile.SYMTYPE),
            _link("a/b", "..", tarfile.SYMTYPE),
            _file("a/b/c/evil.txt"),
        ],
        # Inside the temporary folder, outside once the top folder moves up a level.
        [_file("pets/ok.txt"), _link("pets/up", "../evil.txt", tarfile.SYMTYPE)],
        # A top folder that is itself a link would replace the data set with a link to data/.
        [_link("pets", ".", tarfile.SYMTYPE), _file("pets/ok.txt")],
        [_file("pets/ok.txt"), _link("pets/same", "pets/ok.txt", tarfile.LNKTYPE)],
    ],
    ids=["link-chain", "link-after-move", "top-folder-link", "hard-link"],
)
def test_links_are_refused_with_or_without_the_data_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: list, data_filter: bool
) -> None:
    _no_data_filter(monkeypatch, data_filter)
    archive = _tar(tmp_path / "links.tgz", members)
    target = tmp_path / "data" / "dataset"
    with pytest.raises(PetsError, match="links are not allowed in data archives"):
        extract(archive, target)
    assert not target.exists() and not target.is_symlink()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "links.tgz"]


@pytest.mark.parametrize("data_filter", [True, False], ids=["with-filter", "without-filter"])
def test_modes_and_owners_are_made_safe_without_the_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_filter: bool
) -> None:
    _no_data_filter(monkeypatch, data_filter)
    setuid, tool, folder = _file("pets/a.jpg"), _file("pets/run.sh"), tarfile.TarInfo("pets/sub")
    setuid[0].mode, tool[0].mode = 0o6777, 0o777
    folder.type, folder.mode = tarfile.DIRTYPE, 0o777
    setuid[0].uid = setuid[0].gid = 12345
    archive = _tar(tmp_path / "modes.tgz", [(folder, None), setuid, tool, _file("pets/sub/b")])
    target = tmp_path / "dataset"
    assert extract(archive, target) == "pets"
    assert (target / "a.jpg").stat().st_mode & 0o7777 == 0o755
    assert (target / "run.sh").stat().st_mode & 0o7022 == 0
    assert (target / "sub").stat().st_mode & 0o7022 == 0
    assert (target / "a.jpg").stat().st_uid == os.getuid()


def _zeros_zip(path: Path, size: int) -> Path:
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zipped,
        zipped.open("bomb/zeros.bin", "w") as member,
    ):
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            member.write(block)
    return path


def test_a_compression_bomb_is_refused_before_it_is_written(tmp_path: Path) -> None:
    archive = _zeros_zip(tmp_path / "bomb.zip", 200 << 20)  # the review's 200 KB -> 200 MiB
    assert archive.stat().st_size < 400_000
    target = tmp_path / "data" / "dataset"
    with pytest.raises(PetsError, match=r"data.max_ratio: .*bomb.zip \(.* bytes\) would extract"):
        extract(archive, target)
    assert not target.exists() and not list((tmp_path / "data").iterdir())
    # The limit is a param: a trusted archive passes with a higher one.
    assert extract(archive, target, DataParams(max_ratio=10_000)) == "bomb"


def test_extracted_size_and_member_count_are_bounded(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "many.tgz", [_file(f"pets/{i}.jpg", b"x" * 100) for i in range(5)])
    target = tmp_path / "dataset"
    with pytest.raises(PetsError, match="data.max_members: .* holds more than 3 members"):
        extract(archive, target, DataParams(max_members=3))
    with pytest.raises(PetsError, match="data.max_extract_bytes: .* more than 250 bytes"):
        extract(archive, target, DataParams(max_extract_bytes=250))
    assert not target.exists()
    assert extract(archive, target, DataParams(max_members=6, max_extract_bytes=500)) == "pets"


def test_a_huge_declared_member_stops_at_its_header(tmp_path: Path) -> None:
    # A header that declares 2 TiB (and no data): refused before anything is read or written.
    header = tarfile.TarInfo("pets/huge.bin")
    header.size = 2 << 40
    raw = tmp_path / "huge.tar"
    raw.write_bytes(header.tobuf(tarfile.GNU_FORMAT) + bytes(10240))
    with pytest.raises(PetsError, match="data.max_extract_bytes"):
        extract(raw, tmp_path / "dataset")


def test_a_full_disk_is_one_line_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _tar(tmp_path / "pets.tgz", [_file("pets/a.jpg", b"x" * 5000)])
    target = tmp_path / "data" / "dataset"
    usage = archive_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(PetsError, match=f"extracts to 5,000 bytes, but {tmp_path / 'data'} has"):
        extract(archive, target)
    monkeypatch.undo()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    with pytest.raises(PetsError) as error:
        extract(archive, target)
    assert str(error.value) == (
        f"data.url: the disk under {tmp_path / 'data'} filled up while extracting (No space "
        "left on device); free some space and run the stage again"
    )
    assert not target.exists() and not list((tmp_path / "data").iterdir())


def test_names_that_are_not_utf8_are_refused_at_extraction(tmp_path: Path) -> None:
    archive = tmp_path / "latin1.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        info = tarfile.TarInfo("pets/caf\u00e9.jpg")  # written as the single byte 0xe9
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(PetsError) as error:
        extract(archive, tmp_path / "dataset")
    assert "its name is not valid UTF-8" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "dataset").exists()


def test_other_members_no_data_set_has(tmp_path: Path) -> None:
    clash = _tar(tmp_path / "clash.tgz", [_file("pets/a"), _file("pets/a/b.jpg")])
    with pytest.raises(PetsError, match="a file and a folder share its path"):
        extract(clash, tmp_path / "dataset")
    fifo = tarfile.TarInfo("pets/fifo")
    fifo.type = tarfile.FIFOTYPE
    with pytest.raises(PetsError, match="not a file or folder"):
        extract(_tar(tmp_path / "fifo.tgz", [_file("pets/ok"), (fifo, None)]), tmp_path / "d")
    encrypted = tmp_path / "secret.zip"
    with zipfile.ZipFile(encrypted, "w") as zipped:
        zipped.writestr("pets/a.jpg", b"x")
    data = bytearray(encrypted.read_bytes())  # set the "encrypted" flag in both headers
    central = data.find(b"PK\x01\x02")
    data[6] |= 0x1
    data[central + 8] |= 0x1
    encrypted.write_bytes(bytes(data))
    with pytest.raises(PetsError, match="it is encrypted; pack it without a password"):
        extract(encrypted, tmp_path / "dataset")
    assert not (tmp_path / "dataset").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://user:hunter2@example.com/pets.tgz",
            "https://***@example.com/pets.tgz",
        ),
        (
            "https://bucket.s3.amazonaws.com/pets.tgz?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature=abc123&versionId=7",
            "https://bucket.s3.amazonaws.com/pets.tgz?X-Amz-Algorithm=***"
            "&X-Amz-Credential=***&X-Amz-Signature=***&versionId=7",
        ),
        (
            "https://acct.blob.core.windows.net/c/pets.tgz?sv=2022-11-02&se=2026&sig=ZmFr%3D",
            "https://acct.blob.core.windows.net/c/pets.tgz?sv=2022-11-02&se=2026&sig=***",
        ),
        (
            "https://storage.googleapis.com/b/pets.tgz?X-Goog-Signature=ff&x-goog-date=1",
            "https://storage.googleapis.com/b/pets.tgz?X-Goog-Signature=***&x-goog-date=***",
        ),
        (
            "http://h/pets.tgz?token=t&API_KEY=k&password=p&access_token=a&page=2#id_token=z",
            "http://h/pets.tgz?token=***&API_KEY=***&password=***&access_token=***&page=2"
            "#id_token=***",
        ),
        ("https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz", None),
        ("data/my photos.tgz", None),
        ("file:///home/me/pets.tgz", None),
        ("/abs/path?token=not-a-url.tgz", None),
    ],
)
def test_urls_are_redacted_where_they_are_recorded(url: str, expected: str | None) -> None:
    assert redact_url(url) == (expected or url)


def test_the_manifest_and_messages_hold_no_secrets(tmp_path: Path, server, monkeypatch) -> None:
    url, handler = server
    archive = _tar(tmp_path / "src.tgz", [_file("pets/a.txt", b"a" * 50)])
    handler.payload = archive.read_bytes()
    monkeypatch.setenv("PETS_ARCHIVES", str(tmp_path / "store"))
    signed = f"{url}?X-Amz-Signature=s3cr3t&token=t0k3n"
    fetched = fetch(signed, None)
    written = dataset_manifest(signed, fetched, "pets", 1)
    assert "s3cr3t" not in str(written) and "t0k3n" not in str(written)
    assert written["url"].endswith("pets.tgz?X-Amz-Signature=***&token=***")
    assert written["archive"] == "pets.tgz"
    with pytest.raises(PetsError) as error:
        fetch(signed, "0" * 32)
    assert "s3cr3t" not in str(error.value) and "***" in str(error.value)
    with pytest.raises(PetsError) as error:
        fetch("http://127.0.0.1:9/pets.tgz?sig=s3cr3t", None, timeout=5)
    assert "s3cr3t" not in str(error.value)
    assert isinstance(fetched, Fetched)
