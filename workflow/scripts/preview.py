"""Stage `preview`: see `--help`; its code is src/pets/stages/preview.py."""

from pets.stages.preview import cli

if __name__ == "__main__":
    cli()
