"""fastai's side of benchmarks/predict.py, run with the python of an environment that has
fastai 2.8: `learn.predict(photo)` latency and `get_preds` on a test DataLoader."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from fastai.vision.all import (
    ImageDataLoaders,
    Normalize,
    Resize,
    aug_transforms,
    imagenet_stats,
    models,
    vision_learner,
)


def main() -> None:
    """Usage: fastai_predict.py FOLDER PHOTOS REPEATS BS."""
    folder, count, repeats, bs = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    photos = sorted(folder.glob("*.jpg"))[:count]
    dls = ImageDataLoaders.from_name_re(
        folder,
        photos,
        r"^(.*)_\d+.jpg$",  # fastai v2 matches the file name
        valid_pct=0.2,
        seed=2,
        item_tfms=Resize(460),
        batch_tfms=[*aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)],
        bs=bs,
    )
    learn = vision_learner(dls, models.resnet34, pretrained=False)
    with learn.no_bar(), learn.no_logging():
        learn.predict(photos[0])  # warm-up
        latencies = []
        for path in photos[:repeats]:
            start = time.perf_counter()
            learn.predict(path)
            latencies.append(time.perf_counter() - start)
        test = learn.dls.test_dl(photos, bs=bs)
        learn.get_preds(dl=learn.dls.test_dl(photos[:bs], bs=bs))  # warm-up
        start = time.perf_counter()
        learn.get_preds(dl=test)
        throughput = len(photos) / (time.perf_counter() - start)
    print(
        "RESULT "
        + json.dumps({"latency_s": statistics.median(latencies), "photos_per_s": throughput}),
        flush=True,
    )


if __name__ == "__main__":
    main()
