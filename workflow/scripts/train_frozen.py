"""Stage `train_frozen`: see `python workflow/scripts/train_frozen.py --help` (src/pets/stages/train_frozen.py)."""

from pets.stages.train_frozen import cli

if __name__ == "__main__":
    cli()
