"""Anomaly map, mask, regions, score and verdict for one image or a folder of images.

    python predict.py demo_data/brick/test/scratch/000.png --category brick
"""
import logging
import os
import sys

from utils import ArgumentParser, run_cli  # first: quiets Paddle's import
import cli  # noqa: E402
import visualize  # noqa: E402
from datasets.transforms import list_inputs, load_rgb  # noqa: E402
from pipeline.evaluate import predict_batches  # noqa: E402
from outputs import PredictionWriter, load_ignore_mask  # noqa: E402
from pipeline.geometry import AspectWarnings, batch_for  # noqa: E402

logger = logging.getLogger("predict")


def get_args(argv=None):
    p = ArgumentParser(description="Score one image or every image of a folder with a fitted "
                                   "model; write a figure per image and, for a folder, a CSV.")
    p.add_argument("input", type=str, help="an image file or a folder of images")
    p.add_argument("--category", type=str, default=None,
                   help="category whose model to use (<save_path>/<method>_<arch>_k<k>/<category>"
                        ".safetensors)")
    cli.add_model_args(p, fitting=False)
    cli.add_run_args(p)
    p.add_argument("--model_path", type=str, default=None, help="a model file (instead of "
                   "--category)")
    p.add_argument("--threshold", type=float, default=None,
                   help="override the model's image and pixel thresholds (learned from held-out "
                        "normal images, or calibrated)")
    p.add_bool("--save_pic", True, "write a figure per image (image, heat map, predicted mask)")
    p.add_bool("--save_outputs", True, "write the machine-readable outputs per image: the binary "
               "mask at the original resolution (masks/<stem>.png) and the defect regions "
               "(regions/<stem>.json: box, area, peak and mean score)")
    p.add_argument("--ignore_mask", type=str, default=None,
                   help="PNG of pixels never to score (white = ignore), added to the model's own")
    p.add_argument("--output", type=str, default=None,
                   help="output folder (default: <model folder>/predict/<category>)")
    p.add_argument("--save_maps", type=str, default=None,
                   help="also write each original-size map (float16 TIFF) and its mask at the "
                        "pixel threshold (0 / 255 PNG) under this folder in the form the MVTec "
                        "AD 2 evaluation server accepts: anomaly_images[_thresholded]/"
                        "<category>/<input folder name>/<stem>")
    return p.parse_args(argv)


def main(args):
    """Predict every input image; return a list of dicts (path, score, verdict, picture)."""
    cli.check_common(args)
    files = list_inputs(args.input)
    model, path = cli.open_model(args, "use")
    threshold, pixel_threshold = visualize.thresholds(model.meta)
    if args.threshold is not None:
        threshold = pixel_threshold = args.threshold
    if threshold is None:
        logger.warning("the model has no threshold (fitted with --holdout 0): verdicts are "
                       "'unknown'; pass --threshold")
    name = os.path.splitext(os.path.basename(path))[0]     # the file's name, not its contents
    out_dir = args.output or os.path.join(os.path.dirname(os.path.abspath(path)), "predict",
                                          name)
    pre = model.preprocess
    if args.ignore_mask:
        model.extra_ignore = load_ignore_mask(args.ignore_mask, pre)
    split = os.path.basename(os.path.normpath(os.path.abspath(
        args.input if os.path.isdir(args.input) else os.path.dirname(args.input))))
    writer = PredictionWriter(out_dir, pre, (threshold, pixel_threshold), model.meta,
                              model.ignore, args.save_pic, args.save_outputs,
                              (args.save_maps, name, split) if args.save_maps else None,
                              files, os.path.isdir(args.input) or len(files) > 1)
    aspect = AspectWarnings(pre, limit=10)

    def load(f):
        rgb = load_rgb(f)
        return pre.image(rgb), f, rgb.shape[:2]
    for batch, maps, scores in predict_batches(model, files, load,
                                               batch_for(args.batch_size, pre.input_hw),
                                               "predict"):
        for (x, f, hw), amap, score in zip(batch, maps, scores):
            aspect.check(f, hw)
            writer.add(f, x, hw, amap, float(score))
    aspect.close(f"the {len(files)} images")
    csv_path = writer.finish()
    if csv_path:
        print(f"{len(files)} images; table in {csv_path}")
    if args.save_pic or args.save_outputs:
        print(f"outputs in {out_dir} (image threshold {threshold}, pixel threshold "
              f"{pixel_threshold})")
    return writer.rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
