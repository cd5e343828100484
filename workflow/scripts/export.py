"""Stage `export`: see `--help`; its code is src/pets/stages/export.py."""

from pets.stages.export import cli

if __name__ == "__main__":
    cli()
