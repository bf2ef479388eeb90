"""Evaluate fitted models: image AUROC, pixel AUROC, AU-PRO (and the paper's protocol; MVTec AD 2's
AU-PRO at 0.05 and SegF1; MVTec LOCO's sPRO), on data in any layout (--data_format).

    python eval.py --data_path demo_data --category all --eval_PRO
"""
import logging
import os
import sys

from utils import ArgumentParser, UserError, ensure_dir, run_cli  # first: quiets Paddle
import cli  # noqa: E402
from datasets.layouts import data_options, open_data  # noqa: E402
from modelfile import read_meta  # noqa: E402
from pipeline import model as models_io  # noqa: E402
from pipeline.evaluate import eval_options, evaluate_category  # noqa: E402
from pipeline.results import RunResults  # noqa: E402

logger = logging.getLogger("eval")


def get_args(argv=None):
    p = ArgumentParser(description="Evaluate fitted OrthoAD / PaDiM / PatchCore models on the test sets.")
    cli.add_data_args(p)
    p.add_argument("--category", type=str, default="all",
                   help="all, textures, objects (MVTec AD), or a category name (the model's "
                        "name with --data_format folder)")
    cli.add_model_args(p, fitting=False)
    cli.add_run_args(p)
    cli.add_precision_args(p, fitting=False)
    p.add_argument("--model_path", type=str, default=None,
                   help="a model file (one category) instead of <save_path>/<method>_<arch>_k<k>/")
    p.add_argument("--resize", type=int, default=None, help="must match the model file if given")
    p.add_argument("--crop_size", type=int, default=None, help="must match the model file if given")
    cli.add_eval_args(p)
    return p.parse_args(argv)


def main(args):
    """Evaluate every selected category; return the result rows (one dict per category)."""
    cli.check_common(args)
    if args.normal_split is not None:          # the held-out normals the fit chose, not others
        args.seed = _split_seed(args)
    _, categories, datas = open_data(args)     # every category read and checked first
    for c in categories:
        datas[c].require_test()
    if args.model_path and len(categories) != 1:
        raise UserError("--model_path holds one category's model: pass --category NAME too")
    out_dir = ensure_dir(os.path.dirname(os.path.abspath(args.model_path)) if args.model_path
                         else cli.run_folder(args))
    threads = cli.apply_threads(args)
    opts = eval_options(args, out_dir)
    results = None
    for category in categories:
        path = args.model_path or cli.category_model(args, category)
        model = models_io.load(path, None, args.weights)
        cli.check_model_flags(args, model.meta, path)
        cli.check_precision(args.precision, model.precision, f"model '{path}'")
        model.use_engine(args.engine, None, threads)
        if results is None:
            results = RunResults(out_dir, args.report,
                                 cli.run_info(args, model.meta["weights_source"], model.engine))
        result = evaluate_category(model, datas[category], opts)
        results.add(result.row, result)
        del model
    print(results.finish())
    print(f"results.csv in {out_dir}")
    return results.rows


def _split_seed(args):
    """The seed the fit used to hold normal test images out of --normal_dir (--normal_split):
    read from the model, so that evaluation tests exactly the images the fit never saw."""
    opts = data_options(args)
    name = args.category
    path = args.model_path or cli.category_model(args, name)
    split = ((read_meta(path).get("data") or {}).get("normal_split")) or {}
    if not isinstance(split.get("seed"), int) or split.get("fraction") != opts.normal_split:
        raise UserError(f"model '{path}' was not fitted with --normal_split "
                        f"{opts.normal_split}: evaluate with the flags it was fitted with (the "
                        "held-out normal images must not have been in the fit)")
    return split["seed"]


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
