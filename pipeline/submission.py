"""Anomaly maps in the form the MVTec AD 2 evaluation server accepts.

What the server's own checker (MVTec's ``check_and_prepare_data_for_upload.py``) requires, as
read from it:

    <DIR>/anomaly_images/<object>/test_private/000_regular.tiff ...         float16, one channel
    <DIR>/anomaly_images/<object>/test_private_mixed/000_mixed.tiff ...
    <DIR>/anomaly_images_thresholded/<object>/test_private/000_regular.png   0 / 255, one channel
    <DIR>/anomaly_images_thresholded/<object>/test_private_mixed/000_mixed.png

one file per test image, named by the image's stem, for all eight objects and both private
sets (the checker counts the files; it then packs DIR as a .tar.gz for upload). The maps are
written here at the image's original resolution; the binarised masks at the model's pixel
threshold. Labelled ``test_public`` maps go to the same tree (``test_public/<good|bad>/``), as
MVTec's dataset class names them.

The files themselves are written by ``outputs.write_server_map`` (predict.py uses it too).
"""
import logging

from datasets.ignore import original_map
from outputs import MASKS, write_server_map

logger = logging.getLogger(__name__)


def write_unlabelled(model, data, root, batch_size):
    """Score every unlabelled test image of ``data`` (MVTec AD 2's test_private and
    test_private_mixed) and write its map and mask in the server's form under ``root``."""
    import visualize
    from datasets.transforms import load_rgb

    from .evaluate import predict_batches
    from .geometry import batch_for
    pre = model.preprocess
    _, pixel_threshold = visualize.thresholds(model.meta)
    if pixel_threshold is None:
        logger.warning("%s: the model has no threshold: only the continuous maps are written "
                       "(the server also wants %s)", data.name, MASKS)

    def load(path):
        rgb = load_rgb(path)
        return pre.image(rgb), path, rgb.shape[:2]
    n = 0
    for split, paths in sorted(data.unlabelled.items()):
        for batch, maps, _ in predict_batches(model, paths, load,
                                              batch_for(batch_size, pre.input_hw),
                                              f"maps {data.name}/{split}"):
            for (_, path, hw), amap in zip(batch, maps):
                full = original_map(pre, amap, hw, model.ignore)
                write_server_map(root, data.name, split, path, full, pixel_threshold)
                n += 1
    logger.info("%s: maps of %d unlabelled test images (%s) written for the MVTec AD 2 "
                "evaluation server under %s", data.name, n, ", ".join(sorted(data.unlabelled)),
                root)
    return n
