"""Stage `get_preds`: see `--help`; its code is src/pets/stages/get_preds.py."""

from pets.stages.get_preds import cli

if __name__ == "__main__":
    cli()
