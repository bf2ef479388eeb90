"""Score a list of image files with a ``Detector`` and write their outputs: what predict.py (a
model file) and infer.py (an export) both do, in one place."""
import logging
import os

from orthoad_runtime.transforms import AspectWarnings, batch_for
from orthoad_runtime.outputs import PredictionWriter

logger = logging.getLogger(__name__)


def predict_files(detector, files, out_dir, name, split, table, save_pic=True,
                  save_outputs=True, save_maps=None, ignore_mask=None, batch_size=8):
    """Predict every file, writing each image's outputs as it goes (``outputs``).

    Args:
        name: the model's name for MVTec AD 2 server maps (the model file's or export folder's
            name, never a value read from the file).
        split: the input folder's name (server maps).
        table: write predictions.csv.

    Returns:
        the writer's rows (path, score, relative_score, verdict, n_regions, ... per image).
    """
    image_t, pixel_t = detector.thresholds
    if image_t is None:
        logger.warning("the model has no threshold (fitted with --holdout 0): verdicts are "
                       "'unknown'; pass --threshold")
    writer = PredictionWriter(out_dir, detector.meta, save_pic, save_outputs,
                              (save_maps, name, split) if save_maps else None, files, table)
    aspect = AspectWarnings(detector.preprocess, limit=10)
    batch = batch_for(batch_size, detector.preprocess.input_hw)
    for p in detector.predict_iter(files, ignore_mask, batch, keep_input=save_pic,
                                   on_prepared=lambda q: aspect.check(q.path, q.original_hw)):
        writer.add(p)
    aspect.close(f"the {len(files)} images")
    csv_path = writer.finish()
    if csv_path:
        print(f"{len(files)} images; table in {csv_path}")
    if save_pic or save_outputs:
        print(f"outputs in {out_dir} (image threshold {image_t}, pixel threshold {pixel_t})")
    return writer.rows


def input_folder_name(path):
    """The name of the folder an input (an image or a folder) lies in or is."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return os.path.basename(os.path.normpath(os.path.abspath(folder)))
