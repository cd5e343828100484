"""Stage `download`: see `--help`; its code is src/pets/stages/download.py."""

from pets.stages.download import cli

if __name__ == "__main__":
    cli()
