"""Stage `lr_find`: see `python workflow/scripts/lr_find.py --help` (src/pets/stages/lr_find.py)."""

from pets.stages.lr_find import cli

if __name__ == "__main__":
    cli()
