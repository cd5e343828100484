"""Stage `interpret`: see `--help`; its code is src/pets/stages/interpret.py."""

from pets.stages.interpret import cli

if __name__ == "__main__":
    cli()
