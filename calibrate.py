"""Set a fitted model's thresholds on labelled calibration images, without refitting.

    python calibrate.py --model_path output/ortho_resnet18_k100/brick.safetensors \
        --calibration_dir my_calibration/brick --threshold_target fpr=0.01

The calibration folder holds good/ and any defect folders, masks optional in
ground_truth/<defect>/<stem>_mask.png (or plain folders: --calibration_normal_dir ...); it must
not hold test images of the category (checked against the test set of the data the model was
fitted on, or of the data flags given). The model file is replaced atomically; its threshold
record names the rule.
"""
import logging
import os
import sys

from utils import ArgumentParser, UserError, run_cli  # first: quiets Paddle
import cli  # noqa: E402
from datasets.layouts import DataOptions, Dataset, data_options  # noqa: E402
from pipeline.calibration import (calibrate, calibration_samples,  # noqa: E402
                                  calibration_source, parse_target)

logger = logging.getLogger("calibrate")


def get_args(argv=None):
    p = ArgumentParser(description="Calibrate a fitted model's image and pixel thresholds on "
                                   "labelled images.")
    p.add_argument("--model_path", type=str, default=None, help="the fitted model file")
    p.add_argument("--category", type=str, default=None,
                   help="instead of --model_path: the category under --save_path")
    cli.add_model_args(p, fitting=False)
    cli.add_run_args(p)
    cli.add_precision_args(p, fitting=False)
    cli.add_calibration_args(p)
    cli.add_data_args(p)
    return p.parse_args(argv)


def main(args):
    """Calibrate and save; return the new threshold record."""
    cli.check_common(args)
    source = calibration_source(args)
    if not source:
        raise UserError("say which images to calibrate on: --calibration_dir DIR (or "
                        "--calibration_normal_dir and --calibration_abnormal_dir)")
    target = parse_target(args.threshold_target)
    model, path = cli.open_model(args, "calibrate")
    category = model.meta["category"]
    data = _test_data(args, model.meta, category)
    samples = calibration_samples(source, category, 1, data)
    record = calibrate(model, samples, target, args.batch_size, source.describe())
    model.save(path)
    print(f"{category}: image threshold {record['image']:.6g}, pixel threshold "
          f"{record['pixel']:.6g} ({record['rule']}) -> {path}")
    return record


def _test_data(args, meta, category):
    """The category's data, whose test images must stay out of the calibration: from the data
    flags if given, else from the data the model records (its folders checked first)."""
    if args.data_path or args.normal_dir:
        dataset = Dataset(data_options(args))
        return dataset.read(dataset.select(category)[0])
    record = meta.get("data") or {}
    abnormal = record.get("abnormal_dir")
    types = record.get("abnormal_types")
    opts = DataOptions(data_format=record.get("layout", "mvtec"), data_path=meta.get("data_path"),
                       normal_dir=record.get("normal_dir"),
                       abnormal_dir=[f"{t}={p}" for t, p in zip(types, abnormal)]
                       if abnormal and types and len(types) == len(abnormal) else abnormal,
                       normal_test_dir=record.get("normal_test_dir"),
                       mask_dir=record.get("mask_dir"))
    split = record.get("normal_split") or {}
    if split:
        opts.normal_split, opts.seed = split.get("fraction"), split.get("seed", 0)
    folders = [p for p in (opts.data_path, opts.normal_dir, opts.normal_test_dir, opts.mask_dir,
                           *(abnormal or [])) if p]
    if not folders or not all(isinstance(p, str) and os.path.isdir(p) for p in folders):
        raise UserError("the data the model was fitted on is not where it records it: pass "
                        "--data_path (or the folder flags) so that test images can be kept out "
                        "of the calibration")
    logger.info("test images kept out of the calibration: those of the %s data the model "
                "records (%s; checked: existing folders, only read)", opts.data_format,
                ", ".join(folders))
    dataset = Dataset(opts)
    return dataset.read(dataset.select(category)[0])


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
