"""The lesson's `untar_data`: fetch an archive once, verify it, extract it safely."""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from pets.errors import PetsError
from pets.files import md5_file, remove

CHUNK = 1 << 20


def archive_store() -> Path:
    """Where downloaded archives are kept between runs and clones: `$PETS_ARCHIVES` or
    `~/.cache/pets/archives` (the role of fastai's `~/.fastai/archive`)."""
    if env := os.environ.get("PETS_ARCHIVES"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pets" / "archives"


def archive_name(url: str) -> str:
    """The archive's file name as the URL or path gives it (`oxford-iiit-pet.tgz`)."""
    parsed = urllib.parse.urlparse(url)
    path = parsed.path if parsed.scheme in ("http", "https", "file") else url
    name = posixpath.basename(urllib.parse.unquote(path).rstrip("/"))
    if not name:
        raise PetsError(f"data.url: {url!r} does not name an archive file")
    return name


def local_path(url: str) -> Path | None:
    """The file a `file://` URL or a plain path points at; None for http(s)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise PetsError(
            f"data.url: unsupported scheme {parsed.scheme!r}; use http(s), file:// or a path"
        )
    return Path(url).expanduser()


def _verify(path: Path, md5: str | None, url: str) -> str:
    actual = md5_file(path)
    if md5 is not None and actual != md5:
        raise PetsError(f"data.md5: {url} has md5 {actual}, expected {md5}")
    return actual


def _download(url: str, target: Path, md5: str | None, timeout: float) -> str:
    """Stream `url` into `target.part`, resuming a partial download, then verify and rename."""
    part = target.with_name(target.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # the partial file is already complete
            response = None
        else:
            raise PetsError(
                f"data.url: cannot download {url}: HTTP {exc.code} {exc.reason}"
            ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PetsError(
            f"data.url: cannot download {url} ({reason}); download it yourself and set data.url "
            "to the file's path"
        ) from None
    if response is not None:
        with response:
            resumed = response.status == 206
            total = response.length + (done if resumed else 0) if response.length else None
            with (
                open(part, "ab" if resumed else "wb") as out,
                tqdm(
                    total=total,
                    initial=done if resumed else 0,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=target.name,
                    mininterval=1,
                ) as bar,
            ):
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
        received = part.stat().st_size
        if total is not None and received < total:
            raise PetsError(
                f"data.url: the download of {url} stopped at {received:,} of {total:,} bytes; "
                "run the stage again to resume it"
            )
    try:
        actual = _verify(part, md5, url)
    except PetsError:
        part.unlink()  # a bad download must not be resumed or reused
        raise
    os.replace(part, target)
    return actual


@dataclass(frozen=True)
class Fetched:
    """An archive on local disk, verified."""

    path: Path
    md5: str
    size: int


def fetch(url: str, md5: str | None, timeout: float = 60.0) -> Fetched:
    """Return a verified local copy of the archive at `url`, downloading it at most once."""
    source = local_path(url)
    if source is not None:
        if not source.is_file():
            raise PetsError(f"data.url: {source} does not exist or is not a file")
        return Fetched(source, _verify(source, md5, url), source.stat().st_size)
    store = archive_store()
    store.mkdir(parents=True, exist_ok=True)
    key = hashlib.md5(url.encode()).hexdigest()[:12]
    target = store / f"{key}-{archive_name(url)}"
    if target.exists():
        try:
            return Fetched(target, _verify(target, md5, url), target.stat().st_size)
        except PetsError:
            target.unlink()  # a cached copy that no longer verifies is downloaded again
    actual = _download(url, target, md5, timeout)
    return Fetched(target, actual, target.stat().st_size)


def _inside(name: str) -> str:
    """`name` normalised; raises if it is absolute or climbs out of the extraction folder."""
    if (
        name.startswith(("/", "\\"))
        or PurePosixPath(name).is_absolute()
        or ":" in name.split("/")[0]
    ):
        raise PetsError(f"refusing archive member {name!r}: absolute path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../"):
        raise PetsError(f"refusing archive member {name!r}: it would land outside the data folder")
    return normal


def _check_tar(members: list[tarfile.TarInfo]) -> None:
    for member in members:
        name = _inside(member.name)
        if member.issym():
            if member.linkname.startswith("/"):
                raise PetsError(f"refusing archive member {member.name!r}: absolute link target")
            _inside(posixpath.join(posixpath.dirname(name), member.linkname))
        elif member.islnk():
            _inside(member.linkname)
        elif not (member.isfile() or member.isdir()):
            raise PetsError(f"refusing archive member {member.name!r}: not a file or folder")


def _check_zip(infos: list[zipfile.ZipInfo]) -> None:
    for info in infos:
        _inside(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PetsError(
                f"refusing archive member {info.filename!r}: links are not allowed in zips"
            )


def _top_folder(names: list[str]) -> str | None:
    """The single top-level folder every member lies in, if there is one."""
    tops = {name.split("/")[0] for name in names if name not in ("", ".")}
    if len(tops) != 1:
        return None
    top = tops.pop()
    return top if any(name.startswith(top + "/") for name in names) else None


def extract(archive: Path, target: Path) -> str | None:
    """Extract `archive` (tar, tar.gz/tgz, zip) into the folder `target`, refusing members that
    would land outside it; when everything lies in one top-level folder, that folder becomes
    `target`. Returns that folder's name, or None. `target` appears only when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.extract-*"):
        remove(stale)
    tmp = target.with_name(f".{target.name}.extract-{os.getpid()}")
    try:
        names = _extract_checked(archive, tmp)
        top = _top_folder(names)
        remove(target)
        os.replace(tmp / top if top else tmp, target)
        return top
    finally:
        remove(tmp)


def _extract_checked(archive: Path, folder: Path) -> list[str]:
    """Check every member, then extract them all into `folder`; returns the member names."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as opened:
                infos = opened.infolist()
                _check_zip(infos)
                opened.extractall(folder)
                return [posixpath.normpath(info.filename) for info in infos]
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as opened:
                members = opened.getmembers()  # reads to the end: a truncated file fails here
                _check_tar(members)
                if hasattr(tarfile, "data_filter"):  # PEP 706 checks again as it writes
                    opened.extractall(folder, filter="data")
                else:
                    opened.extractall(folder)
                return [posixpath.normpath(member.name) for member in members]
    except PetsError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise PetsError(f"data.url: {archive} is truncated or corrupt ({exc})") from None
    raise PetsError(f"data.url: {archive} is not a .tgz, .tar.gz, .tar or .zip archive")


def count_files(folder: Path) -> int:
    """How many regular files lie under `folder`."""
    return sum(1 for path in folder.rglob("*") if path.is_file())
