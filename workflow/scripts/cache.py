"""Stage `cache`: `python workflow/scripts/cache.py --help` (its code: src/pets/stages/cache.py)."""

from pets.stages.cache import cli

if __name__ == "__main__":
    cli()
