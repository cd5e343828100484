"""Stage `get_preds`: see `python workflow/scripts/get_preds.py --help` (src/pets/stages/get_preds.py)."""

from pets.stages.get_preds import cli

if __name__ == "__main__":
    cli()
