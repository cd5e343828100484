"""Stage `labels`: see `--help`; its code is src/pets/stages/labels.py."""

from pets.stages.labels import cli

if __name__ == "__main__":
    cli()
