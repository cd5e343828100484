"""Stage `download`: see `python workflow/scripts/download.py --help` (src/pets/stages/download.py)."""

from pets.stages.download import cli

if __name__ == "__main__":
    cli()
