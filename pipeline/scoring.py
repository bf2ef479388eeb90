"""Scoring a list of items with a model's engine, batch by batch, decoded ahead: what the
evaluation, the calibration and MVTec AD 2's server maps share."""
import numpy as np

from orthoad_runtime.prefetch import prefetch_batches
from utils import progress


def predict_batches(model, items, load, batch_size, desc, image=lambda loaded: loaded[0]):
    """Score ``items`` with the model's engine; yield (loaded items, maps [B, H, W],
    scores [B]); ``image(loaded item)`` is the network input [3, H, W]."""
    bar = progress(len(items), desc)
    try:
        for batch in prefetch_batches(items, load, batch_size):
            maps, scores = model.score(np.stack([image(b) for b in batch]))
            bar.update(len(batch))
            yield batch, maps, scores
    finally:
        bar.close()
