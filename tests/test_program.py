"""The torch.export copy (model.pt2): it round-trips with its spec inside, its batch size is
free, `Predictor` (so `pets predict` and `pets serve`) loads it and agrees with the export
folder, and a damaged file is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pets.errors import PetsError
from pets.export import PROGRAM, load_program, save_weights, to_program
from pets.model import create_body, create_cnn
from pets.modelspec import ModelSpec
from pets.predict import Predictor
from pets.synthetic import make_pets
from tests.helpers import SMALL_SIZES, export_spec

SPEC = export_spec(["Abyssinian", "Bengal", "Birman"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A seeded resnet18 in eval mode and an export folder holding it with its .pt2 copy."""
    torch.manual_seed(0)
    model = create_cnn(create_body("resnet18", "none"), 3).eval()
    folder = tmp_path_factory.mktemp("export")
    save_weights(model, SPEC, folder)
    to_program(model, torch.randn(2, 3, 48, 48), folder / PROGRAM, SPEC)
    return model, folder


def test_the_program_round_trips_with_a_free_batch_size(exported) -> None:
    model, folder = exported
    program, spec = load_program(folder / PROGRAM)
    assert spec == ModelSpec.parse({k: v for k, v in SPEC.items() if k != "format"}, "SPEC")
    program.eval()  # refused by exported modules; a no-op here, as Predictor calls it
    with torch.no_grad():
        for batch in (1, 5):
            images = torch.randn(batch, 3, 48, 48)
            assert (program(images) - model(images)).abs().max() <= 1e-5


def test_predictor_loads_the_program_and_agrees(exported, tmp_path: Path) -> None:
    _, folder = exported
    make_pets(tmp_path, 1, classes=3, seed=2, sizes=SMALL_SIZES)
    photos = sorted((tmp_path / "images").glob("*.jpg"))
    from_folder = list(Predictor(folder, device="cpu").predict(photos))
    from_program = list(Predictor(folder / PROGRAM, device="cpu").predict(photos))
    for a, b in zip(from_folder, from_program, strict=True):
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
        assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-5)


def test_a_damaged_program_is_one_clear_error(exported, tmp_path: Path) -> None:
    _, folder = exported
    damaged = tmp_path / PROGRAM
    damaged.write_bytes((folder / PROGRAM).read_bytes()[:5000])
    with pytest.raises(PetsError, match="not a readable torch.export program") as raised:
        load_program(damaged)
    assert "\n" not in str(raised.value)
    with pytest.raises(PetsError, match="no such file"):
        load_program(tmp_path / "absent.pt2")
