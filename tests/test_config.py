"""params.yaml validation: every problem is one line naming the key and what it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pets.config import PETS_MD5, PETS_URL, Params, load_params, parse_params
from pets.errors import PetsError
from pets.stages import specs

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_are_the_lessons_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    assert params == Params()
    assert params.seed == 2
    assert params.data.url == PETS_URL and params.data.md5 == PETS_MD5
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
        ({"data": {"md5": "xyz"}}, "data.md5: must be 32 hex digits or null"),
        ({"device": "tpu"}, "device: input should be 'auto', 'cuda' or 'cpu'"),
        ({"cache": {"size": 8}}, "cache.size: input should be greater than or equal to 32"),
    ],
)
def test_bad_params_name_the_key(raw: dict, expected: str) -> None:
    with pytest.raises(PetsError) as error:
        parse_params(raw)
    message = str(error.value)
    assert expected in message
    assert message.startswith("params.yaml: ")
    assert "\n" not in message


def test_yaml_floats_in_exponent_form_are_accepted() -> None:
    # PyYAML reads `1e-3` as a string (YAML 1.1); users write it anyway.
    assert parse_params({"labels": {"valid_pct": "2e-1"}}).labels.valid_pct == 0.2


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
