"""Evaluate fitted models: image AUROC, pixel AUROC, AU-PRO (and the paper's protocol).

    python eval.py --data_path demo_data --category all --eval_PRO
"""
import logging
import os
import sys

from utils import (ArgumentParser, UserError, ensure_dir, model_path, run_cli,  # first: quiets Paddle
                   run_dir)
import cli  # noqa: E402
from datasets.mvtec import resolve_categories  # noqa: E402
from pipeline import model as models_io  # noqa: E402
from pipeline.evaluate import eval_options, evaluate_category  # noqa: E402
from pipeline.results import RunResults  # noqa: E402

logger = logging.getLogger("eval")


def get_args(argv=None):
    p = ArgumentParser(description="Evaluate fitted OrthoAD / PaDiM models on the test sets.")
    p.add_argument("--data_path", type=str, required=True, help="MVTec-layout data root")
    p.add_argument("--category", type=str, default="all",
                   help="all, textures, objects, or a category folder name")
    cli.add_model_args(p, fitting=False)
    cli.add_run_args(p)
    p.add_argument("--model_path", type=str, default=None,
                   help="a model file (one category) instead of <save_path>/<method>_<arch>_k<k>/")
    p.add_argument("--resize", type=int, default=None, help="must match the model file if given")
    p.add_argument("--crop_size", type=int, default=None, help="must match the model file if given")
    cli.add_eval_args(p)
    return p.parse_args(argv)


def main(args):
    """Evaluate every selected category; return the result rows (one dict per category)."""
    cli.check_common(args)
    categories = resolve_categories(args.data_path, args.category)
    if args.model_path and len(categories) != 1:
        raise UserError("--model_path holds one category's model: pass --category NAME too")
    out_dir = ensure_dir(os.path.dirname(os.path.abspath(args.model_path)) if args.model_path
                         else run_dir(args.save_path, args.method, args.arch, args.k))
    threads = cli.apply_threads(args)
    opts = eval_options(args, out_dir)
    expect = {"method": args.method, "arch": args.arch, "k": args.k, "resize": args.resize,
              "crop_size": args.crop_size}
    results = None
    for category in categories:
        path = args.model_path or model_path(args.save_path, args.method, args.arch, args.k,
                                             category)
        model = models_io.load(path, expect, args.weights)
        model.use_engine(args.engine, cli.graph_cache(out_dir), threads)
        if results is None:
            results = RunResults(out_dir, args.report,
                                 cli.run_info(args, model.meta["weights_source"], model.engine))
        result = evaluate_category(model, args.data_path, category, opts)
        results.add(result.row, result)
        del model
    print(results.finish())
    print(f"results.csv in {out_dir}")
    return results.rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
