"""Stage `train_frozen`: see `--help`; its code is src/pets/stages/train_frozen.py."""

from pets.stages.train_frozen import cli

if __name__ == "__main__":
    cli()
