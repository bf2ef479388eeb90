"""VisA, as downloaded (the raw tree; no conversion to MVTec's layout needed):

    ROOT/split_csv/1cls.csv                    columns object, split, label, image, mask
    ROOT/<object>/Data/Images/Normal/*.JPG
    ROOT/<object>/Data/Images/Anomaly/*.JPG
    ROOT/<object>/Data/Masks/Anomaly/*.png     any non-zero value marks a defect (not 255)

The CSV decides everything: ``split`` train / test, ``label`` normal / anomaly, the image and
mask paths (relative to ROOT). ``--category all`` takes every object of the CSV. VisA gives no
defect types, so anomalous images have the type ``anomaly``. Every path is checked to lie
inside ROOT before it is opened.
"""
import csv
import logging
import os

from utils import UserError

from .samples import MASK_NONZERO, CategoryData, Sample, check_unique, warn_masks

logger = logging.getLogger(__name__)

NAME = "visa"
SPLIT_CSV = os.path.join("split_csv", "1cls.csv")
TREE = ("ROOT/split_csv/1cls.csv (object, split, label, image, mask) + "
        "ROOT/<object>/Data/Images/{Normal,Anomaly}/, ROOT/<object>/Data/Masks/Anomaly/")
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
SPLITS = ("train", "test")
_ROWS = {}


def recognise(root):
    """The reason ROOT is a VisA tree, or None."""
    return f"{SPLIT_CSV} found" if os.path.isfile(os.path.join(root, SPLIT_CSV)) else None


def _inside(root, rel, where):
    """``rel`` (a path from the CSV) joined under ROOT, refused if it is absolute or climbs out
    of ROOT ('..'). Checked on the text, so a folder the user links into ROOT still works."""
    norm = os.path.normpath(rel)
    if os.path.isabs(rel) or norm == os.pardir or norm.startswith(os.pardir + os.sep) or \
            norm.startswith(os.sep):
        raise UserError(f"{where}: path '{rel}' leads outside the data root '{root}': the CSV "
                        "must hold paths relative to the root, inside it")
    return os.path.join(root, norm)


def rows(root):
    """The CSV's rows, validated: [(line, object, split, label, image path, mask path)]."""
    path = os.path.join(root, SPLIT_CSV)
    key = (os.path.realpath(path), *_stat(path))
    if key in _ROWS:
        return _ROWS[key]
    if not os.path.isfile(path):
        raise UserError(f"'{path}' does not exist: a VisA root holds split_csv/1cls.csv (the "
                        "raw download); pass that root as --data_path")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise UserError(f"'{path}' lacks the column(s) {', '.join(missing)}: VisA's "
                                f"1cls.csv has {', '.join(COLUMNS)}")
            out = []
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                where = f"'{path}' line {line}"
                if not row["object"] or "/" in row["object"] or row["object"] in (".", ".."):
                    raise UserError(f"{where}: object '{row['object']}' is not a plain name: "
                                    "fix the row")
                if row["split"] not in SPLITS:
                    raise UserError(f"{where}: split '{row['split']}' is neither train nor "
                                    "test: fix the row")
                if row["label"] not in LABELS:
                    raise UserError(f"{where}: label '{row['label']}' is neither normal nor "
                                    "anomaly: fix the row")
                if row["split"] == "train" and row["label"] != "normal":
                    raise UserError(f"{where}: an anomalous image in the train split would "
                                    "enter the normal statistics: move it to test")
                image = _inside(root, row["image"], where)
                if not os.path.isfile(image):
                    raise UserError(f"{where}: image '{image}' does not exist: restore the file "
                                    "or remove the row")
                mask = None
                if row["mask"]:
                    mask = _inside(root, row["mask"], where)
                    if not os.path.isfile(mask):
                        raise UserError(f"{where}: mask '{mask}' does not exist: restore the "
                                        "file or clear the row's mask column")
                    if row["label"] == "normal":
                        raise UserError(f"{where}: a normal image with a mask: clear the mask "
                                        "or label the image anomaly")
                out.append((line, row["object"], row["split"], row["label"], image, mask))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read '{path}' ({exc}): restore VisA's split_csv/1cls.csv") \
            from None
    logger.info("visa: %d rows of %s, every image and mask path checked to lie inside '%s'",
                len(out), SPLIT_CSV, root)
    _ROWS[key] = out
    return out


def _stat(path):
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None, None


def categories(root):
    return sorted({r[1] for r in rows(root)})


def read(root, name, options=None):
    mine = [r for r in rows(root) if r[1] == name]
    train = sorted(r[4] for r in mine if r[2] == "train")
    test = sorted((Sample(r[4], LABELS[r[3]], "good" if r[3] == "normal" else "anomaly",
                          (r[5],) if r[5] else (), "test", MASK_NONZERO)
                   for r in mine if r[2] == "test"),
                  key=lambda s: (s.label, s.path))
    check_unique(test, train)
    warn_masks(name, test)
    folder = os.path.join(root, name)
    return CategoryData(name, NAME, folder, train, test=test,
                        test_dirs=[os.path.join(folder, "Data", "Images", "Anomaly")],
                        record={"csv": SPLIT_CSV})
