"""Stage `train_resnet50`: see `python workflow/scripts/train_resnet50.py --help` (src/pets/stages/train_resnet50.py)."""

from pets.stages.train_resnet50 import cli

if __name__ == "__main__":
    cli()
