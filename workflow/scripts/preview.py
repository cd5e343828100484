"""Stage `preview`: see `python workflow/scripts/preview.py --help` (src/pets/stages/preview.py)."""

from pets.stages.preview import cli

if __name__ == "__main__":
    cli()
