"""The lesson's `untar_data`: fetch an archive once, verify it, extract it safely."""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import posixpath
import re
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from pets.config import DataParams, shown
from pets.errors import PetsError
from pets.files import md5_file, remove

CHUNK = 1 << 20


@dataclass(frozen=True)
class KnownArchive:
    """A lesson archive's published size and md5 (fastai's `fastai/data/checks.txt`)."""

    size: int
    md5: str


# The archives the lesson and its homework name, by URL: `data.md5: auto` checks these and
# nothing else, so pointing `data.url` at your own archive needs no md5 at all.
KNOWN_ARCHIVES: dict[str, KnownArchive] = {
    "https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz": KnownArchive(
        811_706_944, "e4db5c768afd933bb91f5f594d7417a4"
    ),
    "https://s3.amazonaws.com/fast-ai-sample/mnist_sample.tgz": KnownArchive(
        3_214_948, "2dbc7ec6f9259b583af0072c55816a88"
    ),
    "http://files.fast.ai/data/examples/mnist_sample.tgz": KnownArchive(
        3_214_948, "2dbc7ec6f9259b583af0072c55816a88"
    ),
}


# Query keys whose values are secrets in signed or authenticated URLs (S3, GCS, Azure SAS,
# CloudFront, API tokens): matched case-insensitively, as whole names or as parts of them.
SECRET_KEYS = re.compile(
    r"(^x-(amz|goog)-)|token|sig|signature|key|credential|password|passwd|pwd|secret|auth|"
    r"session|policy",
    re.IGNORECASE,
)
REDACTED = "***"


def _redact_pairs(text: str) -> str:
    parts = []
    for part in text.split("&"):
        name, equals, _ = part.partition("=")
        if equals and SECRET_KEYS.search(urllib.parse.unquote_plus(name)):
            part = f"{name}={REDACTED}"
        parts.append(part)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """`url` as it may be recorded or shown (MLflow params and tags, `data/dataset.json`,
    messages): user name and password replaced by `***`, and so are the values of query (and
    fragment) keys that carry secrets (token, sig, signature, key, credential, password,
    X-Amz-*, X-Goog-*, ...). Paths and other URLs come back unchanged."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or (parts.scheme == "file" and not parts.netloc):
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    fragment = _redact_pairs(parts.fragment) if "=" in parts.fragment else parts.fragment
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, _redact_pairs(parts.query), fragment)
    )


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
        raise PetsError(f"data.url: {shown(redact_url(url))} does not name an archive file")
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


def expected_md5(url: str, md5: str | None) -> str | None:
    """The md5 an archive must have: `data.md5` when it is given, with `auto` the registry's
    md5 for a lesson URL (`KNOWN_ARCHIVES`), else None (nothing checked)."""
    if md5 == "auto":
        known = KNOWN_ARCHIVES.get(url)
        return known.md5 if known else None
    return md5


URL_LIST_SUFFIXES = (".csv",)


def source_kind(url: str) -> str:
    """What `data.url` names: `archive` (a URL or a local archive file), `folder` (a local
    folder of photos) or `urls` (a URL list: a local `.csv` of `url,label` rows, or a folder
    of `<label>.txt` files and no photos)."""
    from pets.images import IMAGE_EXTENSIONS

    path = local_path(url)
    if path is None:
        return "archive"
    if path.is_dir():
        files = [
            file.relative_to(path).as_posix()
            for file in path.rglob("*")
            if file.is_file() and not is_junk(file.relative_to(path).as_posix())
        ]
        if any(PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS for name in files):
            return "folder"
        if any(name.lower().endswith(".txt") for name in files):
            return "urls"
        raise PetsError(
            f"data.url: {path} holds no photos (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}) "
            "and no <label>.txt URL lists"
        )
    return "urls" if path.suffix.lower() in URL_LIST_SUFFIXES else "archive"


def _verify(path: Path, md5: str | None, url: str) -> str:
    actual = md5_file(path)
    expected = expected_md5(url, md5)
    if expected is not None and actual != expected:
        if md5 == "auto":
            how = (
                f"the known md5 of this lesson archive; the file is damaged or the URL now "
                f"serves another file: run the stage again to download it afresh, or set "
                f"data.md5: {actual} (or null) in params.yaml to accept it"
            )
        else:
            how = (
                f"data.md5 in params.yaml; if this is the file you mean, set data.md5: {actual} "
                "(or auto: no check for your own archives)"
            )
        raise PetsError(
            f"data.md5: {redact_url(url)} has md5 {actual}, expected {expected} ({how})"
        )
    return actual


def _download(url: str, target: Path, md5: str | None, timeout: float) -> str:
    """Stream `url` into `target.part`, resuming a partial download, then verify and rename.
    Messages show the URL redacted (`redact_url`)."""
    shown_url = redact_url(url)
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
                f"data.url: cannot download {shown_url}: HTTP {exc.code} {exc.reason}"
            ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PetsError(
            f"data.url: cannot download {shown_url} ({reason}); download it yourself and set "
            "data.url to the file's path"
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
                try:
                    while block := response.read(CHUNK):
                        out.write(block)
                        bar.update(len(block))
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise PetsError(
                            f"data.url: the disk under {part.parent} filled up while downloading "
                            f"{shown_url} ({exc.strerror}); free some space (or set "
                            "$PETS_ARCHIVES to another disk) and run the stage again"
                        ) from None
                    if not isinstance(exc, ConnectionError | TimeoutError):
                        raise
                except http.client.HTTPException:
                    pass  # a connection cut mid-body: resumed below like any short download
        received = part.stat().st_size
        if total is not None and received < total:
            raise PetsError(
                f"data.url: the download of {shown_url} stopped at {received:,} of {total:,} "
                "bytes; run the stage again to resume it"
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
        raise PetsError(f"refusing archive member {shown(name)}: absolute path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../"):
        raise PetsError(
            f"refusing archive member {shown(name)}: it would land outside the data folder"
        )
    return normal


def _utf8(name: str) -> None:
    """Refuse a name that is not valid UTF-8 (tarfile keeps such bytes as surrogates): no later
    stage could write it into a CSV or JSON file."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PetsError(
            f"refusing archive member {shown(name)}: its name is not valid UTF-8; rename it "
            "and pack the archive again"
        ) from None


class _Budget:
    """Counts members and bytes as an archive is read, against the `data.max_*` limits; the
    ratio limit applies past `RATIO_FLOOR` bytes (small archives of text compress far)."""

    RATIO_FLOOR = 64 << 20

    def __init__(self, archive: Path, limits: DataParams) -> None:
        self.archive, self.limits = archive, limits
        self.archive_bytes = max(1, archive.stat().st_size)
        self.members = self.bytes = 0
        self.files: set[str] = set()
        self.folders: set[str] = set()

    def add(self, name: str, size: int, is_file: bool) -> None:
        self.members += 1
        self.bytes += max(0, size)
        limits = self.limits
        if self.members > limits.max_members:
            raise PetsError(
                f"data.max_members: {self.archive} holds more than {limits.max_members:,} "
                "members; raise data.max_members if the data set really is that large"
            )
        if self.bytes > limits.max_extract_bytes:
            raise PetsError(
                f"data.max_extract_bytes: {self.archive} would extract to more than "
                f"{limits.max_extract_bytes:,} bytes; raise data.max_extract_bytes if the data "
                "set really is that large"
            )
        if self.bytes > self.RATIO_FLOOR and self.bytes > limits.max_ratio * self.archive_bytes:
            raise PetsError(
                f"data.max_ratio: {self.archive} ({self.archive_bytes:,} bytes) would extract to "
                f"more than {limits.max_ratio:g} times its size (a compression bomb?); raise "
                "data.max_ratio if you trust it"
            )
        parts = name.split("/")
        parents = ["/".join(parts[:depth]) for depth in range(1, len(parts))]
        if any(parent in self.files for parent in parents) or (is_file and name in self.folders):
            raise PetsError(
                f"refusing archive member {shown(name)}: a file and a folder share its path"
            )
        self.folders.update(parents)
        if is_file:
            self.files.add(name)


def _check_tar_member(member: tarfile.TarInfo) -> str:
    """The member's normalised name, after refusing anything but plain files and folders:
    links (symbolic or hard) are refused altogether, since a data set needs none and a link
    checked in one place can point elsewhere once the top folder moves up (and, before
    `tarfile.data_filter`, a chain of them escaped the folder)."""
    _utf8(member.name)
    name = _inside(member.name)
    if member.issym() or member.islnk():
        raise PetsError(
            f"refusing archive member {shown(member.name)}: links are not allowed in data "
            "archives (pack the files themselves: tar --dereference)"
        )
    if member.issparse():
        raise PetsError(
            f"refusing archive member {shown(member.name)}: sparse files are not allowed"
        )
    if not (member.isfile() or member.isdir()):
        raise PetsError(f"refusing archive member {shown(member.name)}: not a file or folder")
    return name


def _safe_tar_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owner and permission bits a data file may have (what `tarfile.data_filter` also does):
    owned by whoever extracts, readable, never setuid, writable by the owner only."""
    member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
    executable = member.mode & 0o100 or member.isdir()
    member.mode = 0o755 if executable else 0o644
    return member


def _check_zip_member(info: zipfile.ZipInfo) -> str:
    name = _inside(info.filename)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise PetsError(
            f"refusing archive member {shown(info.filename)}: links are not allowed in data "
            "archives"
        )
    if info.flag_bits & 0x1:
        raise PetsError(
            f"refusing archive member {shown(info.filename)}: it is encrypted; pack it without "
            "a password"
        )
    return name


# What Macs and Windows leave beside photos: Finder's resource forks (`__MACOSX/`, `._name`) and
# folder settings (`.DS_Store`), Explorer's thumbnail cache and folder settings. Never photos,
# so they are not extracted or linked, not counted as broken files, and not a second top folder.
JUNK_FOLDERS = frozenset({"__MACOSX", ".Spotlight-V100", ".Trashes", ".fseventsd"})
JUNK_FILES = frozenset({".DS_Store", "Thumbs.db", "ehthumbs.db", "desktop.ini", "Desktop.ini"})


def is_junk(name: str) -> bool:
    """Whether the archive member or file `name` (a relative '/'-separated path) is what an
    operating system leaves beside photos (`__MACOSX/`, `._x.jpg`, `.DS_Store`, `Thumbs.db`,
    `desktop.ini`)."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if any(part in JUNK_FOLDERS for part in parts):
        return True
    return bool(parts) and (parts[-1] in JUNK_FILES or parts[-1].startswith("._"))


def _top_folder(names: list[str]) -> str | None:
    """The single top-level folder every member lies in, if there is one."""
    tops = {name.split("/")[0] for name in names if name not in ("", ".")}
    if len(tops) != 1:
        return None
    top = tops.pop()
    return top if any(name.startswith(top + "/") for name in names) else None


def extract(archive: Path, target: Path, limits: DataParams | None = None) -> str | None:
    """Extract `archive` (tar, tar.gz/tgz, zip) into the folder `target`, refusing members that
    would land outside it, links, special files, names that are not UTF-8, and archives past
    the `data.max_*` limits in `limits` (the data section; defaults when None); when
    everything lies in one top-level folder, that folder becomes `target`. Returns that
    folder's name, or None. `target` appears only when complete; a full disk is one line
    naming the folder."""
    limits = limits or DataParams()
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.extract-*"):
        remove(stale)
    tmp = target.with_name(f".{target.name}.extract-{os.getpid()}")
    try:
        names = _extract_checked(archive, tmp, _Budget(archive, limits))
        top = _top_folder(names)
        remove(target)
        os.replace(tmp / top if top else tmp, target)
        return top
    finally:
        remove(tmp)


def _room(folder: Path, needed: int) -> None:
    """Refuse to start when the disk under `folder` lacks `needed` bytes."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise PetsError(
            f"data.url: the archive extracts to {needed:,} bytes, but {folder} has only "
            f"{free:,} bytes free; free some space or move the project"
        )


def _disk_full(exc: OSError, folder: Path) -> PetsError | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PetsError(
            f"data.url: the disk under {folder} filled up while extracting ({exc.strerror}); "
            "free some space and run the stage again"
        )
    return None


def _extract_checked(archive: Path, folder: Path, budget: _Budget) -> list[str]:
    """Check every member, then extract them all into `folder`; returns the member names."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as opened:
                infos = opened.infolist()
                names = []
                kept = []
                for info in infos:
                    name = _check_zip_member(info)
                    if is_junk(name):
                        continue
                    names.append(name)
                    kept.append(info)
                    budget.add(name, info.file_size, not info.is_dir())
                _room(folder.parent, budget.bytes)
                opened.extractall(folder, kept)
                return names
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as opened:
                members, names = [], []
                # Read member by member (to the end: a truncated file fails here), so a bomb's
                # first huge header stops it before its data is decompressed.
                for member in opened:
                    name = _check_tar_member(member)
                    if is_junk(name):
                        continue
                    names.append(name)
                    budget.add(name, member.size, member.isfile())
                    members.append(_safe_tar_member(member))
                _room(folder.parent, budget.bytes)
                if hasattr(tarfile, "data_filter"):  # PEP 706 checks again as it writes
                    opened.extractall(folder, members, filter="data")
                else:  # sound without it: no links, names checked, modes made safe above
                    opened.extractall(folder, members)
                return names
    except PetsError:
        raise
    except OSError as exc:
        full = _disk_full(exc, folder.parent)
        if full:
            raise full from None
        raise PetsError(f"data.url: {archive} is truncated or corrupt ({exc})") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise PetsError(f"data.url: {archive} is truncated or corrupt ({exc})") from None
    except (NotImplementedError, RuntimeError) as exc:  # zip: unsupported compression, password
        raise PetsError(f"data.url: {archive} cannot be extracted ({exc})") from None
    raise PetsError(f"data.url: {archive} is not a .tgz, .tar.gz, .tar or .zip archive")


@dataclass(frozen=True)
class Linked:
    """A user's folder made the data set folder."""

    top_folder: str | None  # the single top-level folder that became the data set's root
    files: int
    md5: str  # of every kept file's path and md5: the data set's identity, as for an archive
    linked: bool  # every file hard-linked (False: some copied, across disks)


def link_folder(source: Path, target: Path) -> Linked:
    """Make `target` the data set folder of the user's folder `source` without copying or
    touching it: every file (junk left out, see `is_junk`) hard-linked into place, copied only
    where the two lie on different disks or links are refused. When everything lies in one
    top-level folder (after the junk), that folder's content becomes `target`. Returns that
    folder's name (or None), the file count, and whether every file was linked.

    Hard links keep `target` a real folder (DVC hashes it as an output; Snakemake and DVC
    delete it before a rerun, which unlinks the links and leaves the photos alone)."""
    if not source.is_dir():
        raise PetsError(f"data.url: {source} is not a folder")
    files = sorted(
        (path for path in source.rglob("*") if path.is_file()),
        key=lambda path: path.relative_to(source).as_posix(),
    )
    names = [path.relative_to(source).as_posix() for path in files]
    kept = [(path, name) for path, name in zip(files, names, strict=True) if not is_junk(name)]
    if not kept:
        raise PetsError(f"data.url: {source} holds no files (besides operating-system junk)")
    for _, name in kept:
        _utf8(name)
    top = _top_folder([name for _, name in kept])
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.link-*"):
        remove(stale)
    tmp = target.with_name(f".{target.name}.link-{os.getpid()}")
    linked = True
    lines = []
    try:
        for path, name in kept:
            lines.append(f"{name}\t{md5_file(path)}")
            destination = tmp / (name.split("/", 1)[1] if top else name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:  # another disk, or a file system without hard links
                linked = False
                try:
                    shutil.copyfile(path, destination)
                except OSError as exc:
                    full = _disk_full(exc, target.parent)
                    raise full or PetsError(f"data.url: cannot read {path} ({exc})") from None
        remove(target)
        os.replace(tmp, target)
    finally:
        remove(tmp)
    md5 = hashlib.md5("\n".join(lines).encode()).hexdigest()
    return Linked(top, len(kept), md5, linked)


def dataset_manifest(
    url: str, fetched: Fetched, top_folder: str | None, files: int
) -> dict[str, Any]:
    """`data/dataset.json`: what the download stage extracted, from where (the URL redacted)."""
    return {
        "url": redact_url(url),
        "archive": archive_name(url),
        "md5": fetched.md5,
        "bytes": fetched.size,
        "top_folder": top_folder,
        "files": files,
    }


def count_files(folder: Path) -> int:
    """How many regular files lie under `folder`."""
    return sum(1 for path in folder.rglob("*") if path.is_file())
