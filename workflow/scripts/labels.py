"""Stage `labels`: see `python workflow/scripts/labels.py --help` (src/pets/stages/labels.py)."""

from pets.stages.labels import cli

if __name__ == "__main__":
    cli()
