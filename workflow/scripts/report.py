"""Stage `report`: see `--help`; its code is src/pets/stages/report.py."""

from pets.stages.report import cli

if __name__ == "__main__":
    cli()
