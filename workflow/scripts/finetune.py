"""Stage `finetune`: see `python workflow/scripts/finetune.py --help` (src/pets/stages/finetune.py)."""

from pets.stages.finetune import cli

if __name__ == "__main__":
    cli()
