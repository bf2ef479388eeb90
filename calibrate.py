"""Set a fitted model's thresholds on labelled calibration images, without refitting.

    python calibrate.py --model_path output/ortho_resnet18_k100/brick.safetensors \
        --calibration_dir my_calibration/brick --threshold_target fpr=0.01

The calibration folder holds good/ and any defect folders, masks optional in
ground_truth/<defect>/<stem>_mask.png; it must not hold test images of the category (checked
against <data_path>/<category>/test, the data the model was fitted on unless --data_path is
given). The model file is replaced atomically; its threshold record names the rule.
"""
import logging
import sys

from utils import ArgumentParser, UserError, run_cli  # first: quiets Paddle
import cli  # noqa: E402
from pipeline.calibration import calibrate, calibration_samples, parse_target  # noqa: E402

logger = logging.getLogger("calibrate")


def get_args(argv=None):
    p = ArgumentParser(description="Calibrate a fitted model's image and pixel thresholds on "
                                   "labelled images.")
    p.add_argument("--model_path", type=str, default=None, help="the fitted model file")
    p.add_argument("--category", type=str, default=None,
                   help="instead of --model_path: the category under --save_path")
    cli.add_model_args(p, fitting=False)
    cli.add_run_args(p)
    cli.add_calibration_args(p)
    p.add_argument("--data_path", type=str, default=None,
                   help="data root whose <category>/test must not be used (default: the one "
                        "the model was fitted on)")
    return p.parse_args(argv)


def main(args):
    """Calibrate and save; return the new threshold record."""
    cli.check_common(args)
    if not args.calibration_dir:
        raise UserError("say which images to calibrate on: --calibration_dir DIR")
    target = parse_target(args.threshold_target)
    model, path = cli.open_model(args, "calibrate")
    category = model.meta["category"]
    data_path = args.data_path or model.meta.get("data_path")
    if not data_path:
        raise UserError("the model does not record its data folder: pass --data_path so that "
                        "test images can be kept out of the calibration")
    samples = calibration_samples(args.calibration_dir, category, 1, data_path)
    record = calibrate(model, samples, target, args.batch_size, args.calibration_dir)
    model.save(path)
    print(f"{category}: image threshold {record['image']:.6g}, pixel threshold "
          f"{record['pixel']:.6g} ({record['rule']}) -> {path}")
    return record


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
