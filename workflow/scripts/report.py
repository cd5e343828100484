"""Stage `report`: see `python workflow/scripts/report.py --help` (src/pets/stages/report.py)."""

from pets.stages.report import cli

if __name__ == "__main__":
    cli()
