"""Anomaly maps in the form the MVTec AD 2 evaluation server accepts.

What the server's own checker (MVTec's ``check_and_prepare_data_for_upload.py``) requires, as
read from it:

    <DIR>/anomaly_images/<object>/test_private/000_regular.tiff ...         float16, one channel
    <DIR>/anomaly_images/<object>/test_private_mixed/000_mixed.tiff ...
    <DIR>/anomaly_images_thresholded/<object>/test_private/000_regular.png   0 / 255, one channel
    <DIR>/anomaly_images_thresholded/<object>/test_private_mixed/000_mixed.png

one file per test image, named by the image's stem, for all eight objects and both private
sets, and nothing else at any level: any other folder or file (a ``test_public`` folder, a
log) makes it refuse the tree (the checker counts the files per object: can 321, fabric 314,
fruit_jelly 255, rice 277, sheet_metal 142, vial 276, wallplugs 232, walnuts 228; it then packs
DIR as a .tar.gz for upload). The maps are written here at the image's original resolution;
the binarised masks at the model's pixel threshold. The labelled ``test_public`` maps are not
part of it: ``--save_maps`` writes them elsewhere.

The files themselves are written by ``orthoad_runtime.outputs.write_server_map`` (predict.py uses it too).
"""
import logging

from orthoad_runtime.ignore import original_map
from orthoad_runtime.outputs import MAPS, MASKS, write_server_map
from orthoad_runtime.predictions import thresholds

from .scoring import predict_batches

logger = logging.getLogger(__name__)


def write_unlabelled(model, data, root, batch_size):
    """Score every unlabelled test image of ``data`` (MVTec AD 2's test_private and
    test_private_mixed) and write its map and mask in the server's form under ``root``."""

    from .geometry import batch_for
    pre = model.preprocess
    _, pixel_threshold = thresholds(model.meta)
    if pixel_threshold is None:
        logger.warning("%s: the model has no threshold: only the continuous maps are written "
                       "(the server also wants %s)", data.name, MASKS)

    def load(path):
        x, hw = pre.load(path)
        return x, path, hw
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
    _warn_superfluous(root, data.name, data.unlabelled)
    return n


def _warn_superfluous(root, name, unlabelled):
    """Name what lies in ``root`` beside the server's tree (left by an earlier run or by hand):
    the upload checker refuses a tree that holds anything else."""
    import os
    expected = {os.path.splitext(os.path.basename(p))[0] for paths in unlabelled.values()
                for p in paths}
    extra = [e for e in sorted(os.listdir(root)) if e not in (MAPS, MASKS)]
    for top in (MAPS, MASKS):
        obj = os.path.join(root, top, name)
        if not os.path.isdir(obj):
            continue
        extra += [os.path.join(top, name, e) for e in sorted(os.listdir(obj))
                  if e not in unlabelled]
        for split in unlabelled:
            folder = os.path.join(obj, split)
            extra += [os.path.join(top, name, split, f) for f in sorted(os.listdir(folder))
                      if os.path.splitext(f)[0] not in expected]
    if extra:
        logger.warning("%s: %s holds %d entr%s beside the server's tree (%s%s): MVTec's upload "
                       "checker refuses the tree until they are removed", name, root,
                       len(extra), "y" if len(extra) == 1 else "ies", ", ".join(extra[:4]),
                       ", ..." if len(extra) > 4 else "")
