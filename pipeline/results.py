"""The results of a run: printed tables, results.csv, per_type.csv, per_image_<category>.csv
and (``--report``) report.html, all from the categories' ``CategoryResult``s."""
import contextlib
import csv
import fcntl
import math
import os

import numpy as np

from utils import write_csv

from .tables import (COUNT_COLUMNS, IMAGE_COLUMNS, TYPE_COLUMNS, VERDICT_COLUMNS,
                     mean_row, metric_columns, printed_columns)


def _cell(v, width=12):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{'n/a':>{width}}"
    if isinstance(v, str):
        return f"{v:>{width}}"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{v:>{width}d}"
    return f"{v:>{width}.4f}"


def _table(rows, cols, widths=None):
    widths = widths or {}
    lines = ["  ".join(f"{c:>{widths.get(c, 12)}}" for c in cols)]
    for r in rows:
        lines.append("  ".join(_cell(r.get(c), widths.get(c, 12)) for c in cols))
    return "\n".join(lines)


def results_table(rows):
    """The metrics table (with a mean row), undefined values as n/a; the image counts behind
    the image metrics (n_test) and the pixel metrics (n_pixel_images)."""
    cols = ["category"] + [c for c in ("n_test", "n_pixel_images") if any(c in r for r in rows)]
    cols += printed_columns(rows)
    return _table(rows + [mean_row(rows)], cols, {"n_test": 6, "n_pixel_images": 14})


def verdicts_table(rows):
    """The verdicts at each category's threshold (score > threshold is anomalous)."""
    cols = ["category"] + VERDICT_COLUMNS
    small = {c: 6 for c in ("tp", "fp", "fn", "tn")}
    return _table(rows + [mean_row(rows)], cols, dict(small, threshold=10, precision=10,
                                                      recall=8, f1=8, fpr=8))


def types_table(types):
    return _table(types, TYPE_COLUMNS[:-1], {"n": 5, "n_mask": 7, "recall": 8, "defect": 14})


class RunResults:
    """Accumulates the results of a run and writes them after each category (atomically).

    Args:
        out_dir: the run folder (results.csv goes there).
        report: also write report.html (at the end of the run).
        info: facts about the run shown in the report (weights, method, ...).
    """

    def __init__(self, out_dir, report=False, info=None, summary=True):
        self.out_dir, self.report, self.info = out_dir, report, dict(info or {})
        self.summary = summary        # False: write the per-image CSVs only (another process
        self.rows, self.results = [], []  # writes results.csv, per_type.csv and the report)

    def add(self, row, result=None):
        """A category's results.csv row (fit figures and, if evaluated, its metrics) and its
        ``CategoryResult``."""
        self.rows.append(row)
        if result is not None:
            self.results.append(result)
        self.write_tables()
        return self

    def merge(self, parts, order):
        """Take the rows and results of several processes (``[(rows, results), ...]``), in the
        order of the category names ``order``, and write the tables."""
        rank = {c: i for i, c in enumerate(order)}
        self.rows = sorted((r for rows, _ in parts for r in rows),
                           key=lambda r: rank[r["category"]])
        self.results = sorted((r for _, results in parts for r in results),
                              key=lambda r: rank[r.row["category"]])
        if self.rows:
            self.write_tables(images=False)
        return self

    def write_tables(self, images=True):
        if self.results and images:
            res = self.results[-1]
            write_csv(self.image_csv(res.row["category"]), _blank(res.images), IMAGE_COLUMNS)
        if not self.summary:
            return
        path = os.path.join(self.out_dir, "results.csv")
        with locked(path):           # runs writing the same folder at once keep every row
            rows = _kept(path, self.rows) + self.rows
            cols = ["category"] + [c for c in COUNT_COLUMNS[:3] if any(c in r for r in rows)]
            cols += [c for c in metric_columns(rows) + VERDICT_COLUMNS
                     if any(c in r for r in rows) and c not in cols]
            cols += [c for c in ("unscored_defect_frac", "n_train", "fit_seconds",
                                 "eval_seconds") if any(c in r for r in rows)]
            write_csv(path, _blank(rows + [mean_row(rows)]), cols)
        if self.results:
            path = os.path.join(self.out_dir, "per_type.csv")
            with locked(path):
                types = [t for res in self.results for t in res.types]
                write_csv(path, _blank(_kept(path, types) + types), TYPE_COLUMNS)

    def image_csv(self, category):
        return os.path.join(self.out_dir, f"per_image_{category}.csv")

    def finish(self):
        """Write the report (if asked) and return the text to print."""
        parts = []
        evaluated = [r.row for r in self.results]
        if evaluated:
            parts.append(results_table(evaluated))
            if any(r.get("threshold") is not None for r in evaluated):
                parts += ["", "verdicts at the threshold (score > threshold: anomalous):",
                          verdicts_table(evaluated)]
            types = [t for res in self.results for t in res.types]
            if types:
                parts += ["", "per defect type (image AUROC of the type against good):",
                          types_table(types)]
            parts += ["", "per-image results: " + ", ".join(
                self.image_csv(r["category"]) for r in evaluated)]
        if self.report and self.results:
            from .report import write_report
            path = write_report(os.path.join(self.out_dir, "report.html"), self.results,
                                self.info)
            parts.append(f"report: {path}")
        return "\n".join(parts)


@contextlib.contextmanager
def locked(path):
    """An exclusive lock on ``<path>.lock`` while a table is read, merged and replaced."""
    with open(path + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _value(text):
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _kept(path, rows):
    """The rows of the table at ``path`` whose category this run does not write again (other
    runs' categories in the same run folder), numbers parsed; no mean row."""
    if not os.path.isfile(path):
        return []
    mine = {r["category"] for r in rows}
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: v if k in ("category", "defect") else _value(v) for k, v in r.items()}
                for r in csv.DictReader(fh)
                if r.get("category") not in mine and r.get("category") != "mean"]


def _blank(rows):
    return [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]
