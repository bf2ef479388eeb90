"""Command-line pieces shared by every script that scores images with a fitted model or an
export (predict.py in the repository, infer.py / ``orthoad-infer`` here): the per-image output
flags, and ``--precision`` checked against the model's own."""
from .errors import UserError
from .transforms import PREDICT_MAX_PIXELS
from .util import positive_int


def check_precision(requested, model_precision, what):
    """``--precision`` against the model's (or export's) own; return the one to run."""
    if requested in (None, "auto") or requested == model_precision:
        return model_precision
    if requested == "int8":
        raise UserError(f"{what} has no int8 graph (it was fitted in fp32): fit it with "
                        "train.py --precision int8 (and export it with export_model.py --format "
                        "onnx --precision int8)")
    raise UserError(f"{what} was fitted with the int8 backbone: its statistics and thresholds "
                    "belong to the int8 graph; leave --precision out, or fit it again in fp32")


def add_prediction_args(parser):
    """Flags of the scripts that score images and write per-image outputs (predict, infer)."""
    parser.add_argument("--threshold", type=float, default=None,
                        help="override the model's image and pixel thresholds (learned from "
                             "held-out normal images, or calibrated)")
    parser.add_bool("--save_pic", True, "write a figure per image (image, heat map, predicted "
                    "mask)")
    parser.add_bool("--save_outputs", True, "write the machine-readable outputs per image: the "
                    "binary mask at the original resolution (masks/<stem>.png) and the result "
                    "with its defect regions (regions/<stem>.json: box, area, peak and mean "
                    "score)")
    parser.add_argument("--ignore_mask", type=str, default=None,
                        help="PNG of pixels never to score (white = ignore), added to the "
                             "model's own")
    parser.add_argument("--save_server_maps", type=str, default=None,
                        help="also write each original-size map (float16 TIFF) and its mask at "
                             "the pixel threshold (0 / 255 PNG) under this folder in the form "
                             "the MVTec AD 2 evaluation server accepts: "
                             "anomaly_images[_thresholded]/<category>/<input folder name>/"
                             "<stem>")
    parser.add_renamed("--save_maps", "--save_server_maps")
    parser.add_argument("--max_pixels", type=positive_int, default=PREDICT_MAX_PIXELS,
                        help="largest image in pixels, read from its header before decoding "
                             "(an error beyond: a decompression bomb, or a wrong file); default "
                             "four 4096 x 3072 frames")
