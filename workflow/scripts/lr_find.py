"""Stage `lr_find`: see `--help`; its code is src/pets/stages/lr_find.py."""

from pets.stages.lr_find import cli

if __name__ == "__main__":
    cli()
