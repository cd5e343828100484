"""Stage `interpret`: see `python workflow/scripts/interpret.py --help` (src/pets/stages/interpret.py)."""

from pets.stages.interpret import cli

if __name__ == "__main__":
    cli()
