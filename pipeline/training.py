"""One train.py run: its checks, its data, its ranks, and what happens to each category (fit or
update, calibration, save, evaluation, results). train.py only loops over the categories.

Everything is read and checked before anything is written: the flags, every category's data,
the calibration images, and that no model made with other settings would be replaced silently
(``pipeline.fit.check_replacement``; ``--overwrite`` replaces on purpose).
"""
import logging

import cli
from datasets.digest import duplicates
from datasets.layouts import open_data
from utils import UserError, ensure_dir

from . import model as models_io
from .backbones import get_backbone
from .calibration import calibrate, calibration_samples, calibration_source, parse_target
from .distributed import Group
from .evaluate import eval_options, evaluate_category
from .fit import FitConfig, check_replacement, fit_category
from .fit_patchcore import fit_patchcore
from .results import RunResults
from .update import update_category

logger = logging.getLogger(__name__)

EPS_RANGE = (1e-6, 1e6)          # as the model-file schema accepts (schema.EPS_RANGE)


def refuse_test_copies(data):
    """UserError if a test image of ``data`` has the content of a training or validation image
    (a copy under another name or folder): a test image must never be fitted."""
    test = [s.path for s in data.test] + [p for ps in data.unlabelled.values() for p in ps]
    for split, files in (("training", data.train), ("validation", data.validation)):
        same = duplicates(test, files)
        if same:
            t, f = same[0]
            raise UserError(f"test image '{t}' has the same content as {split} image '{f}'"
                            f"{f' (and {len(same) - 1} more pairs)' if len(same) > 1 else ''}: "
                            "a test image must never be fitted; remove one of the copies")


def _refuse_for_patchcore(args):
    """What PatchCore does not do, each in one line with the way out."""
    if args.update:
        raise UserError("--update is not available for --method patchcore: its memory bank is a "
                        "coreset selected from all training patches at once, which new images "
                        "change as a whole; fit again with all the images (train.py without "
                        "--update, --overwrite to replace the model)")
    if args.precision != "fp32":
        raise UserError("--precision int8 is not available for --method patchcore: its int8 "
                        "check compares Gaussians; leave --precision out (float32)")


class TrainingRun:
    """Prepare a run from train.py's flags (``args``); ``process`` each of ``categories``;
    ``finish``.

    Attributes:
        categories: the categories this process fits (all of them, or this rank's share with
            ``--shard categories`` under paddle.distributed.launch).
    """

    def __init__(self, args):
        cli.check_common(args)
        if not 0 <= args.holdout < 1:
            raise UserError(f"--holdout {args.holdout} must be in [0, 1)")
        if getattr(args, "int8_max_change", 1.0) <= 0:
            raise UserError(f"--int8_max_change {args.int8_max_change} must be positive (a "
                            "relative change, e.g. 0.05)")
        if not EPS_RANGE[0] <= args.eps <= EPS_RANGE[1]:
            raise UserError(f"--eps {args.eps} is out of range: use a value in "
                            f"[{EPS_RANGE[0]:g}, {EPS_RANGE[1]:g}] (the papers use 0.01)")
        if args.method == "patchcore":
            _refuse_for_patchcore(args)
        self.args = args
        self.cfg = FitConfig.from_args(args)
        self.target = parse_target(args.threshold_target)
        self.source = calibration_source(args)
        _, self.all_categories, self.data = open_data(args)   # read and checked first
        for c in self.all_categories:
            self.data[c].require_train(minimum=1 if args.update else 2)
            if args.eval:
                self.data[c].require_test()
            if not args.update:
                refuse_test_copies(self.data[c])
        self.calibration = {c: calibration_samples(self.source, c, len(self.all_categories),
                                                   self.data[c])
                            for c in self.all_categories} if self.source else {}
        self.group = Group()           # the ranks of paddle.distributed.launch, or this process
        if args.update and self.group.world > 1:
            raise UserError("--update runs in one process: start it without "
                            "paddle.distributed.launch")
        self.group.check_launch(args, {c: self.data[c].train for c in self.all_categories})
        self.by_category = self.group.world > 1 and (args.shard == "categories" or (
            args.shard == "auto" and len(self.all_categories) >= self.group.world))
        if args.method == "patchcore" and self.group.world > 1 and not self.by_category:
            raise UserError("PatchCore fits each category in one process (its coreset needs "
                            "every feature at once): pass --shard categories (at least as many "
                            "categories as ranks), or start without paddle.distributed.launch")
        self.categories = self.all_categories[self.group.rank::self.group.world] \
            if self.by_category else self.all_categories
        self.fit_group = Group(single=True) if self.by_category else self.group
        self.threads = cli.apply_threads(args)
        self.backbone = None if args.update else \
            get_backbone(args.arch, args.pretrained, args.weights, args.seed)
        if self.backbone is not None and not args.overwrite:   # never replace silently
            for c in self.all_categories:
                check_replacement(self.path(c), self.cfg, self.backbone)
        self.out_dir = ensure_dir(cli.run_folder(args))
        self.opts = eval_options(args, self.out_dir)
        self.results = RunResults(self.out_dir, args.report, cli.run_info(
            args, self.backbone and self.backbone.weights_source, args.engine),
            summary=self.group.is_main and not self.by_category)

    def path(self, category):
        return cli.category_model(self.args, category)

    def _model(self, category):
        """(the category's model, whether it is new): fitted, or the saved one with the new
        images folded in (unchanged when none of them is new)."""
        a = self.args
        if a.update:
            old = models_io.load(self.path(category),
                                 {"method": a.method, "arch": a.arch, "k": a.k}, a.weights)
            new = update_category(old, self.data[category], a.batch_size, a.holdout, a.seed,
                                  a.engine, a.stats_device)
            return (old, False) if new is None else (new, True)
        fit = fit_patchcore if a.method == "patchcore" else fit_category
        return fit(self.data[category], self.cfg, self.backbone, None, self.fit_group), True

    def process(self, category):
        """Fit (or update), calibrate, save and evaluate one category; return its row (None on
        ranks that only helped to fit it)."""
        a = self.args
        model, changed = self._model(category)
        if model is None:                  # another rank finalises this category
            return None
        if category in self.calibration or a.eval:
            model.use_engine(a.engine, None, self.threads)
        if category in self.calibration:
            calibrate(model, self.calibration[category], self.target, a.batch_size,
                      self.source.describe())
        if changed or category in self.calibration:
            model.save(self.path(category))
        row = {"category": category, "n_train": model.meta["n_train"],
               "fit_seconds": model.meta["updates"][-1]["seconds"] if a.update and
               model.meta.get("updates") else model.meta.get("fit_seconds")}
        result = None
        if a.eval:                         # the model just fitted, from memory
            result = evaluate_category(model, self.data[category], self.opts)
            row.update(result.row)
        self.results.add(row, result)
        return row

    def finish(self):
        """Gather the ranks' tables, write and print them; return the result rows."""
        if self.by_category:               # rank 0 writes the tables of every rank's categories
            parts = self.group.gather((self.results.rows, self.results.results))
            self.results.summary = self.group.is_main
            self.results.merge(parts, self.all_categories)
        if not self.group.is_main:
            return self.results.rows
        if self.backbone is not None:
            print(f"backbone weights: {self.backbone.weights_source}")
        summary = self.results.finish()
        if summary:
            print(summary)
        print(f"models and results.csv in {self.out_dir}")
        return self.results.rows
