"""Stage `download`: the lesson's `untar_data(URLs.PETS)`, or your own photos.

`data.url` names one of:
- an archive (http(s), file:// or a path; .tgz, .tar.gz, .tar, .zip): fetched once (downloads
  kept under ~/.cache/pets/archives), verified against `data.md5` (`auto`: the known md5 of a
  lesson archive), extracted into the data set folder, refusing members that would land outside
  it;
- a local folder of photos: hard-linked into the data set folder (copied only across disks),
  never modified; tracked by content, so adding, removing or changing a photo reruns the stage;
- a URL list (a `.csv` of `url,label` rows, or a folder of `<label>.txt` files with one URL per
  line): see pets.url_list.

Operating-system junk (`__MACOSX/`, `._*`, `.DS_Store`, `Thumbs.db`, `desktop.ini`) is left
out; when what is left lies in one top-level folder (Pets: oxford-iiit-pet/), that folder
becomes the data set folder.

params: data.*
outputs: the data set folder (--dataset) and a manifest (--manifest): where the photos came
from, their md5 or count
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pets import paths
from pets.config import Params
from pets.errors import PetsError
from pets.stage import StageSpec, stage_cli

if TYPE_CHECKING:
    from pets.tracking import Tracker


def main(params: Params, *, dataset: Path, manifest: Path, tracker: Tracker | None = None) -> None:
    """Make the data set folder from `data.url`; write the manifest last."""
    from pets.archive import local_path, redact_url, source_kind
    from pets.files import write_json
    from pets.tracking import Tracker

    tracker = tracker or Tracker()
    kind = source_kind(params.data.url)
    local = local_path(params.data.url)
    if kind != "archive" and params.data.md5 not in ("auto", None):
        what = "a folder" if kind == "folder" else "a URL list"
        raise PetsError(f"data.md5: {what} has no md5; set data.md5: auto (or null)")
    if kind == "folder" and local:
        record = _from_folder(local, dataset)
    elif kind == "urls" and local:
        record = _from_list(local, dataset, params)
    else:
        record = _from_archive(dataset, params)
    record = {"url": redact_url(params.data.url), "kind": kind, **record}
    write_json(manifest, record)
    tags = {"data.url": record["url"], "data.kind": kind}
    if "md5" in record:
        tags["data.archive_md5"] = record["md5"]
    tracker.set_tags(tags)
    metrics = {"data_files": record["files"]}
    if "bytes" in record:
        metrics["archive_bytes"] = record["bytes"]
    if "failures" in record:
        metrics["download_failures"] = len(record["failures"])
    tracker.log_metrics(metrics)


def _from_folder(folder: Path, dataset: Path) -> dict[str, Any]:
    from pets.archive import link_folder

    linked = link_folder(folder, dataset)
    how = "linked" if linked.linked else "copied (another disk: hard links are impossible)"
    print(f"{dataset}: {linked.files} files of {folder} {how}")
    return {
        "md5": linked.md5,
        "top_folder": linked.top_folder,
        "files": linked.files,
        "linked": linked.linked,
    }


def _from_list(listing: Path, dataset: Path, params: Params) -> dict[str, Any]:
    from pets.url_list import download_list

    got = download_list(listing, dataset, params.data)
    print(f"{dataset}: {got.saved} photos from {got.listed} URLs; {len(got.failures)} gave none")
    for failure in got.failures[:10]:
        print(f"  {failure['where']}: {failure['reason']}")
    if len(got.failures) > 10:
        print(f"  ... all {len(got.failures)} in the manifest and reports/data_quality.json")
    return {"listed": got.listed, "files": got.saved, "failures": got.failures}


def _from_archive(dataset: Path, params: Params) -> dict[str, Any]:
    from pets.archive import count_files, dataset_manifest, extract, fetch

    fetched = fetch(params.data.url, params.data.md5)
    print(f"extracting {fetched.path} ({fetched.size / 2**20:.1f} MiB, md5 {fetched.md5})")
    top_folder = extract(fetched.path, dataset, params.data)
    files = count_files(dataset)
    print(f"{dataset}: {files} files")
    record = dataset_manifest(params.data.url, fetched, top_folder, files)
    record.pop("url")
    return record


def archive_sources(params: Params) -> list[Path]:
    """What `data.url` names when it is local (an archive, a folder of photos, a URL list):
    tracked by its content (a folder: every file's path and md5)."""
    from pets.archive import local_path

    path = local_path(params.data.url)
    return [path] if path else []


SPEC = StageSpec(
    name="download",
    params=("data",),
    outputs={"dataset": paths.DATASET, "manifest": paths.MANIFEST},
    folders=frozenset({"dataset"}),
    uncached={"dataset": "the verified archive rebuilds it (800 MB of Pets); DVC only hashes it"},
    threads=1,
    sources=archive_sources,
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/download.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
