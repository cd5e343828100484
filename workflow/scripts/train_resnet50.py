"""Stage `train_resnet50`: see `--help`; its code is src/pets/stages/train_resnet50.py."""

from pets.stages.train_resnet50 import cli

if __name__ == "__main__":
    cli()
