"""Fit OrthoAD / PaDiM statistics (or a PatchCore memory bank) per category, optionally
calibrate and evaluate; or fold new normal images into fitted models (--update). Data in any
layout (--data_format).

    python train.py --data_path demo_data --category all --no-pretrained --eval --eval_PRO
    python train.py --data_path new_images --category brick --update
    python train.py --normal_dir good --abnormal_dir scratch dent --normal_split 0.2 --category part
"""
import logging
import sys

from utils import ArgumentParser, run_cli  # first: quiets Paddle
import cli  # noqa: E402
from pipeline.training import TrainingRun  # noqa: E402

logger = logging.getLogger("train")


def get_args(argv=None):
    p = ArgumentParser(description="Fit the per-patch Gaussians of OrthoAD (ortho) or PaDiM "
                                   "(sample), or PatchCore's memory bank (patchcore), on the "
                                   "normal images of each category.")
    cli.add_data_args(p)
    p.add_argument("--category", type=str, default="all",
                   help="all, textures, objects (MVTec AD), or a category name (the model's "
                        "name with --data_format folder)")
    cli.add_model_args(p, fitting=True)
    cli.add_run_args(p)
    cli.add_precision_args(p, fitting=True)
    cli.add_calibration_args(p)
    cli.add_distributed_args(p)
    p.add_bool("--eval", False, "evaluate each category on its test set after fitting")
    p.add_bool("--overwrite", False, "replace a model of the same category that was made with "
               "other settings (input size, seed, weights, cells, eps); without it the fit "
               "refuses")
    cli.add_eval_args(p)
    return p.parse_args(argv)


def main(args):
    """Fit (and with --eval evaluate) every selected category; return the result rows."""
    run = TrainingRun(args)
    for category in run.categories:
        run.process(category)
    return run.finish()


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
