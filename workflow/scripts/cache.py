"""Stage `cache`: see `python workflow/scripts/cache.py --help` (src/pets/stages/cache.py)."""

from pets.stages.cache import cli

if __name__ == "__main__":
    cli()
