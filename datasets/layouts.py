"""Which layout a data set is in, and its categories: the one entry point of every script that
reads data (``--data_format auto|mvtec|visa|mvtec_ad2|mvtec_loco|btad|folder``).

``auto`` recognises the layout from the files and logs which and why; a tree that fits several
layouts is an error naming the candidates. Every category is read and validated by its layout's
reader (``datasets/<layout>.py``) before anything is written.
"""
import logging
import os
from dataclasses import dataclass

from utils import UserError

from . import btad, folder, mvtec, mvtec_ad2, mvtec_loco, visa

logger = logging.getLogger(__name__)

READERS = {m.NAME: m for m in (mvtec, visa, mvtec_ad2, mvtec_loco, btad, folder)}
FORMATS = ("auto",) + tuple(READERS)
# per-category signatures, most specific first (an MVTec AD 2 or LOCO category also has
# train/good, so it is tested before plain MVTec)
_CATEGORY_LAYOUTS = (mvtec_ad2, mvtec_loco, btad, mvtec)


@dataclass
class DataOptions:
    """The data flags of a script (see ``cli.add_data_args``)."""
    data_format: str = "auto"
    data_path: str = None
    normal_dir: str = None
    abnormal_dir: list = None
    normal_test_dir: str = None
    normal_split: float = None
    mask_dir: str = None
    seed: int = 0


def data_options(args):
    """DataOptions from parsed flags (missing flags keep their defaults)."""
    return DataOptions(**{k: getattr(args, k) for k in DataOptions.__dataclass_fields__
                          if getattr(args, k, None) is not None})


def _signature(folder_path):
    for layout in _CATEGORY_LAYOUTS:
        if layout.is_category(folder_path):
            return layout.NAME
    return None


def detect(opts):
    """(layout name, reason) of the data the options point at; UserError if none or several
    layouts fit."""
    if opts.normal_dir:
        return folder.NAME, "--normal_dir given"
    root = opts.data_path
    if not root or not os.path.isdir(root):
        raise UserError(f"--data_path '{root}' is not a folder: give the root that holds the "
                        "category folders (e.g. .../MVTec), or --normal_dir for plain folders")
    own = _signature(root)
    if own is not None:
        parent = os.path.dirname(os.path.abspath(root))
        raise UserError(f"--data_path '{root}' is itself a category ({own} layout): pass its "
                        f"parent ('{parent}') as --data_path and --category "
                        f"{os.path.basename(os.path.abspath(root))}")
    found = {}
    why = visa.recognise(root)
    if why:
        found[visa.NAME] = why
    by_layout = {}
    for d in sorted(os.listdir(root)):
        sig = _signature(os.path.join(root, d))
        if sig:
            by_layout.setdefault(sig, []).append(d)
    for name, cats in by_layout.items():
        found[name] = (f"{len(cats)} category folder(s) in its layout: "
                       f"{', '.join(cats[:4])}{', ...' if len(cats) > 4 else ''}")
    if not found:
        for d in sorted(os.listdir(root)):
            sub = os.path.join(root, d)
            if os.path.isdir(os.path.join(sub, "test")) or os.path.isdir(os.path.join(sub,
                                                                                     "train")):
                raise UserError(f"category folder '{sub}' has no train/good folder (nor "
                                "train/ok): expected " + mvtec.TREE)
        raise UserError(f"no known data layout under '{root}': expected one of "
                        + "; ".join(f"{n}: {m.TREE}" for n, m in READERS.items()
                                    if n != folder.NAME)
                        + " (or --normal_dir for plain folders)")
    if len(found) > 1:
        raise UserError(f"the tree under '{root}' fits several layouts ("
                        + "; ".join(f"{n}: {w}" for n, w in found.items())
                        + "): pass --data_format " + " or ".join(sorted(found)))
    (name, reason), = found.items()
    return name, reason


class Dataset:
    """A data set on disk in one layout.

    Args:
        opts: ``DataOptions``.
        category_name: for plain folders, the model's name (``--category``).
    """

    def __init__(self, opts, category_name=None):
        self.opts = opts
        if opts.data_format not in FORMATS:
            raise UserError(f"--data_format {opts.data_format} is unknown: choose one of "
                            f"{', '.join(FORMATS)}")
        if opts.data_format == "auto":
            self.layout, reason = detect(opts)
            logger.info("data layout: %s (%s)", self.layout, reason)
        else:
            self.layout = opts.data_format
            if self.layout == folder.NAME and not opts.normal_dir:
                raise UserError("--data_format folder needs --normal_dir (and usually "
                                "--abnormal_dir, --normal_test_dir or --normal_split)")
            if self.layout != folder.NAME and (not opts.data_path or
                                               not os.path.isdir(opts.data_path)):
                raise UserError(f"--data_path '{opts.data_path}' is not a folder: give the "
                                f"root of the {self.layout} data set")
            logger.info("data layout: %s (--data_format)", self.layout)
        if self.layout != folder.NAME and opts.normal_dir:
            raise UserError(f"--normal_dir belongs to --data_format folder, not "
                            f"{self.layout}: leave it out, or use --data_format folder")
        self.reader = READERS[self.layout]
        self.root = opts.data_path
        self._folder_name = category_name

    def categories(self):
        """Every category of the data set."""
        if self.layout == folder.NAME:
            return [self._folder_name] if self._folder_name else []
        return self.reader.categories(self.root)

    def select(self, category):
        """'all', an MVTec group ('textures', 'objects') or a category name -> names."""
        if self.layout == folder.NAME:
            if not category or category in ("all", "textures", "objects"):
                raise UserError("plain folders (--normal_dir) hold one category: name its model "
                                "with --category NAME")
            _plain_name(category)
            self._folder_name = category
            return [category]
        found = self.categories()
        if category == "all":
            if not found:
                raise UserError(f"no category under '{self.root}' in the {self.layout} layout: "
                                f"expected {self.reader.TREE}")
            return found
        if category in mvtec.GROUPS:
            if self.layout != mvtec.NAME:
                raise UserError(f"--category {category} is a group of MVTec AD categories; the "
                                f"{self.layout} data set has: {', '.join(found)}")
            names = [c for c in mvtec.GROUPS[category] if c in found]
            if not names:
                raise UserError(f"no MVTec {category} category ({', '.join(mvtec.GROUPS[category])})"
                                f" under '{self.root}': use --category all or a folder name")
            return names
        if category not in found:
            choices = ", ".join(found) if found else "none found"
            hint = "" if self.layout == visa.NAME else \
                f"; a category is a folder laid out as {self.reader.TREE}"
            raise UserError(f"category '{category}' not found in the {self.layout} data set "
                            f"under '{self.root}' (available: {choices}): pass one of them, or "
                            f"all{hint}")
        return [category]

    def read(self, name):
        """The validated ``CategoryData`` of category ``name``."""
        data = self.reader.read(self.root, name, self.opts)
        data.record = dict(data.record, layout=self.layout,
                           data_path=os.path.abspath(self.root) if self.root else None)
        return data


def _plain_name(name):
    if not name or name in (".", "..") or os.sep in name or "/" in name or "\\" in name:
        raise UserError(f"--category '{name}' is not a plain name: use letters, digits, _ or -")
    return name


def open_data(args, category=None):
    """(Dataset, selected category names, {name: CategoryData}) for a script's data flags, every
    category read and validated before the caller writes anything."""
    opts = data_options(args)
    dataset = Dataset(opts)
    names = dataset.select(category if category is not None else args.category)
    return dataset, names, {c: dataset.read(c) for c in names}
