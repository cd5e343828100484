"""Stage `export`: see `python workflow/scripts/export.py --help` (src/pets/stages/export.py)."""

from pets.stages.export import cli

if __name__ == "__main__":
    cli()
