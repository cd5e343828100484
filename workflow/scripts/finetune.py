"""Stage `finetune`: see `--help`; its code is src/pets/stages/finetune.py."""

from pets.stages.finetune import cli

if __name__ == "__main__":
    cli()
