"""Fit OrthoAD / PaDiM statistics per category, optionally calibrate and evaluate; or fold new
normal images into fitted models (--update). Data in any layout (--data_format).

    python train.py --data_path demo_data --category all --no-pretrained --eval --eval_PRO
    python train.py --data_path new_images --category brick --update
    python train.py --normal_dir good --abnormal_dir scratch dent --normal_split 0.2 --category part
"""
import logging
import sys

from utils import (ArgumentParser, UserError, ensure_dir, model_path, run_cli,  # first: quiets Paddle
                   run_dir)
import cli  # noqa: E402
from datasets.layouts import open_data  # noqa: E402
from pipeline.backbones import get_backbone  # noqa: E402
from pipeline.calibration import (calibrate, calibration_samples,  # noqa: E402
                                  calibration_source, parse_target)
from pipeline.distributed import Group  # noqa: E402
from pipeline.evaluate import eval_options, evaluate_category  # noqa: E402
from pipeline.fit import FitConfig, fit_category  # noqa: E402
from pipeline.geometry import parse_cell, parse_input_size  # noqa: E402
from pipeline import model as models_io  # noqa: E402
from pipeline.results import RunResults  # noqa: E402
from pipeline.update import update_category  # noqa: E402

logger = logging.getLogger("train")


def get_args(argv=None):
    p = ArgumentParser(description="Fit the per-patch Gaussians of OrthoAD (ortho) or PaDiM "
                                   "(sample) on the normal images of each category.")
    cli.add_data_args(p)
    p.add_argument("--category", type=str, default="all",
                   help="all, textures, objects (MVTec AD), or a category name (the model's "
                        "name with --data_format folder)")
    cli.add_model_args(p, fitting=True)
    cli.add_run_args(p)
    cli.add_calibration_args(p)
    cli.add_distributed_args(p)
    p.add_bool("--eval", False, "evaluate each category on its test set after fitting")
    cli.add_eval_args(p)
    return p.parse_args(argv)


def main(args):
    """Fit (and with --eval evaluate) every selected category; return the result rows."""
    cli.check_common(args)
    if not 0 <= args.holdout < 1:
        raise UserError(f"--holdout {args.holdout} must be in [0, 1)")
    if args.eps <= 0:
        raise UserError(f"--eps {args.eps} must be positive")
    cfg = FitConfig(args.method, args.arch, args.k, args.seed, args.resize, args.crop_size,
                    args.batch_size, args.eps, args.holdout,
                    parse_input_size(args.input_size), parse_cell(args.cell), args.engine,
                    args.stats, args.ignore_mask, args.save_sums)
    target = parse_target(args.threshold_target)
    source = calibration_source(args)
    _, categories, datas = open_data(args)     # every category read and checked first
    for c in categories:
        datas[c].require_train(minimum=1 if args.update else 2)
        if args.eval:
            datas[c].require_test()
    calibration = {c: calibration_samples(source, c, len(categories), datas[c])
                   for c in categories} if source else {}
    out_dir = ensure_dir(run_dir(args.save_path, args.method, args.arch, args.k))
    group = Group()                    # the ranks of paddle.distributed.launch, or this process
    group.check_launch(args, {c: datas[c].train for c in categories})
    by_category = group.world > 1 and (args.shard == "categories" or (
        args.shard == "auto" and len(categories) >= group.world))
    mine = categories[group.rank::group.world] if by_category else categories
    fit_group = Group(single=True) if by_category else group
    threads = cli.apply_threads(args)
    backbone = None if args.update else \
        get_backbone(args.arch, args.pretrained, args.weights, args.seed)
    opts = eval_options(args, out_dir)
    results = RunResults(out_dir, args.report,
                         cli.run_info(args, backbone and backbone.weights_source, args.engine),
                         summary=group.is_main and not by_category)
    cache = cli.graph_cache(out_dir)
    if args.update and group.world > 1:
        raise UserError("--update runs in one process: start it without "
                        "paddle.distributed.launch")
    for category in mine:
        if args.update:
            path = model_path(args.save_path, args.method, args.arch, args.k, category)
            model = update_category(
                models_io.load(path, {"method": args.method, "arch": args.arch, "k": args.k},
                               args.weights),
                datas[category], args.batch_size, args.holdout, args.seed, args.engine,
                args.stats, cache)
        else:
            model = fit_category(datas[category], cfg, backbone, cache, fit_group)
        if model is None:              # another rank finalises this category
            continue
        if category in calibration or args.eval:
            model.use_engine(args.engine, cache, threads)
        if category in calibration:
            calibrate(model, calibration[category], target, args.batch_size,
                      source.describe())
        model.save(model_path(args.save_path, args.method, args.arch, args.k, category))
        row = {"category": category, "n_train": model.meta["n_train"],
               "fit_seconds": model.meta["updates"][-1]["seconds"] if args.update
               else model.meta["fit_seconds"]}
        result = None
        if args.eval:                      # the model just fitted, from memory
            result = evaluate_category(model, datas[category], opts)
            row.update(result.row)
        results.add(row, result)
        del model
    if by_category:                    # rank 0 writes the tables of every rank's categories
        parts = group.gather((results.rows, results.results))
        results.summary = group.is_main
        results.merge(parts, categories)
    if not group.is_main:
        return results.rows
    if backbone is not None:
        print(f"backbone weights: {backbone.weights_source}")
    summary = results.finish()
    if summary:
        print(summary)
    print(f"models and results.csv in {out_dir}")
    return results.rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
