"""params.yaml validation: every problem is one line naming the key and what it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pets.config import PETS_URL, Params, load_params, parse_params
from pets.errors import PetsError
from pets.stages import specs

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_are_the_lessons_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    assert params == Params()
    assert params.seed == 2
    assert params.data.url == PETS_URL and params.data.md5 == "auto"
    assert params.labels.pattern == r"/([^/]+)_\d+.jpg$"
    assert params.labels.valid_pct == 0.2
    assert (params.augment.max_rotate, params.augment.max_zoom, params.augment.max_warp) == (
        10.0,
        1.1,
        0.2,
    )
    assert params.augment.p_affine == params.augment.p_lighting == 0.75


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"labels": {"valid_pct": 1.5}}, "labels.valid_pct: input should be less than 1 (got 1.5)"),
        ({"labels": {"vaild_pct": 0.1}}, "labels.vaild_pct: unknown key; allowed here: method,"),
        ({"lables": {}}, "lables: unknown key; allowed here: seed, device,"),
        ({"seed": "two"}, "seed: input should be a valid integer"),
        ({"labels": {"method": "regex"}}, "'name_re', 'folder', 'csv', 'name_func' or 'lists'"),
        ({"labels": {"method": "name_func", "func": "nocolon"}}, "labels.func: name_func needs"),
        ({"labels": {"pattern": "no_group"}}, "labels.pattern: needs a capture group"),
        ({"labels": {"pattern": "(unclosed"}}, "labels.pattern: is not a valid regular expression"),
        ({"labels": {"folder": "../outside"}}, "labels.folder: must be a relative path inside"),
        ({"data": {"md5": "xyz"}}, "data.md5: must be auto, 32 hex digits or null"),
        ({"device": "tpu"}, "device: input should be 'auto', 'cuda' or 'cpu'"),
        ({"cache": {"size": 8}}, "cache.size: input should be greater than or equal to 32"),
        ({"finetune": {"keep": "first"}}, "finetune.keep: input should be 'last' or 'best'"),
        (
            {"train_resnet50": {"monitor": "accuracy"}},
            "train_resnet50.monitor: input should be 'valid_loss' or 'error_rate'",
        ),
    ],
)
def test_bad_params_name_the_key(raw: dict, expected: str) -> None:
    with pytest.raises(PetsError) as error:
        parse_params(raw)
    message = str(error.value)
    assert expected in message
    assert message.startswith("params.yaml: ")
    assert "\n" not in message


def test_yaml_floats_in_exponent_form_are_accepted(tmp_path: Path) -> None:
    # PyYAML reads `1e-3` as a string (YAML 1.1); users write it anyway, and DVC (YAML 1.2)
    # reads it as a number: so does load_params. A quoted string is still not a number.
    path = tmp_path / "params.yaml"
    path.write_text("labels: {valid_pct: 2e-1}\nlr_find: {start_lr: 1E-6, end_lr: +1e1}\n")
    params = load_params(path)
    assert params.labels.valid_pct == 0.2
    assert (params.lr_find.start_lr, params.lr_find.end_lr) == (1e-6, 10.0)
    with pytest.raises(PetsError, match="valid_pct: input should be a valid number"):
        parse_params({"labels": {"valid_pct": "2e-1"}})


NAN_INF = [".nan", ".inf", "-.inf", ".NaN"]


@pytest.mark.parametrize("value", NAN_INF)
@pytest.mark.parametrize(
    "where",
    [
        "train_frozen: {{lr: {}}}",
        "train_frozen: {{lr: [1.0e-4, {}]}}",
        "finetune: {{lr: [{}]}}",
        "train_resnet50: {{unfreeze_lr: [{}, 1.0]}}",
        "train_frozen: {{wd: {}}}",
        "augment: {{max_rotate: {}}}",
        "lr_find: {{end_lr: {}}}",
        "interpret: {{confidence: {}}}",
        "export: {{tolerance: {}}}",
        "data: {{max_ratio: {}}}",
    ],
)
def test_nan_and_infinity_are_refused(tmp_path: Path, where: str, value: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(where.format(value) + "\n")
    with pytest.raises(PetsError) as error:
        load_params(path)
    section = where.split(":")[0]
    message = str(error.value)
    assert message.startswith(f"{path}: {section}.") and "\n" not in message
    assert "finite" in message or "valid number" in message or "must be" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train_frozen": {"bs": True}}, "train_frozen.bs: input should be a valid integer"),
        ({"train_frozen": {"epochs": 4.0}}, "train_frozen.epochs: input should be a valid integer"),
        ({"seed": 2**32}, "seed: input should be less than or equal to 4294967295"),
        ({"seed": 10**30}, "seed: input should be less than or equal to 4294967295"),
        ({"seed": -1}, "seed: input should be greater than or equal to 0"),
        ({"tracking": {"enabled": 1}}, "tracking.enabled: input should be a valid boolean"),
        ({"tracking": {"enabled": "yes"}}, "tracking.enabled: input should be a valid boolean"),
        ({"cache": {"size": "448"}}, "cache.size: input should be a valid integer"),
        ({"data": {"url": 5}}, "data.url: input should be a valid string"),
        ({"interpret": {"min_val": 10**12}}, "interpret.min_val: input should be less than"),
        ({"lr_find": {"end_lr": 1e300}}, "lr_find.end_lr: input should be less than"),
        ({"train_frozen": {"lr": [1e-3, 1e9]}}, "train_frozen.lr: must be a number"),
        ({"data": {"max_members": 0}}, "data.max_members: input should be greater than"),
    ],
)
def test_types_are_strict_and_numbers_bounded(raw: dict, expected: str) -> None:
    with pytest.raises(PetsError) as error:
        parse_params(raw)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_the_largest_seed_fits_every_generator() -> None:
    import numpy as np
    import torch

    from pets.config import MAX_SEED
    from pets.data import stream_seed
    from pets.labels import random_split

    seed = parse_params({"seed": MAX_SEED}).seed
    assert len(random_split(10, 0.2, seed)) == 10
    torch.Generator().manual_seed(stream_seed(seed, "train_resnet50:1", "augment", 63))
    np.random.default_rng(seed)
    np.random.seed(seed)  # the legacy generator takes 32 bits at most


def test_alias_bombs_are_refused_before_they_are_built(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    lines.append("seed: *a11")
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 1000
    with pytest.raises(PetsError) as error:
        load_params(path)
    assert str(error.value).startswith(f"{path}: expands to more than 100,000 values")
    # A small aliased value is fine, and a wrong one is echoed short.
    path.write_text("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: &b [*a, *a, *a, *a]\nseed: *b\n")
    with pytest.raises(PetsError) as error:
        load_params(path)
    # The limit is on what follows the path, whose length varies (pytest-xdist puts a worker's
    # temporary folders a level deeper): 125 is what the old limit of 200 on the whole message
    # left after /tmp/pytest-of-root/pytest-N/test_alias_bombs_are_refused_b0/params.yaml.
    prefix = f"{path}: "
    assert str(error.value).startswith(prefix)
    echoed = str(error.value).removeprefix(prefix)
    assert len(echoed) < 125 and echoed.startswith("seed: input should be a valid integer")
    path.write_text("a: &a [*a]\nseed: 1\n")
    with pytest.raises(PetsError, match="expands to more than"):
        load_params(path)


def test_echoed_values_are_cut() -> None:
    with pytest.raises(PetsError) as error:
        parse_params({"data": {"md5": "f" * 100_000}})
    assert len(str(error.value)) < 200
    with pytest.raises(PetsError) as error:
        parse_params({"seed": [[list(range(1000))] * 1000] * 1000})
    assert len(str(error.value)) < 200


def test_files_that_are_not_params(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(PetsError, match="is a FIFO"):
        load_params(fifo)  # reading it would block for ever
    with pytest.raises(PetsError, match="is a folder"):
        load_params(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(PetsError, match="a params file is at most 1 MiB"):
        load_params(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"data: {url: caf\xe9.tgz}\n")
    with pytest.raises(PetsError, match="not UTF-8 text"):
        load_params(latin)
    deep = tmp_path / "deep.yaml"
    deep.write_text("seed: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(PetsError, match=f"{deep}: "):
        load_params(deep)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(PetsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("labels:\n  method: [unclosed\n")
    with pytest.raises(PetsError, match="line 3 is not valid YAML"):
        load_params(broken)
    broken.write_text("- a list\n")
    with pytest.raises(PetsError, match="must be a mapping of sections"):
        load_params(broken)


def test_params_are_frozen() -> None:
    params = Params()
    with pytest.raises(Exception, match="frozen"):
        params.labels.valid_pct = 0.5  # type: ignore[misc]


def test_every_stage_reads_known_keys() -> None:
    for stage, keys in {name: spec.params for name, spec in specs().items()}.items():
        for key in keys:
            assert key in Params.model_fields, (stage, key)
