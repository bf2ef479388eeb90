"""The records every data-layout reader produces, and the checks they share.

A reader (``datasets/mvtec.py``, ``visa.py``, ``mvtec_ad2.py``, ``mvtec_loco.py``, ``btad.py``,
``folder.py``) turns a tree on disk into one ``CategoryData`` per category: the normal training
images, optional normal validation images (they set the threshold), the labelled test
``Sample``s and any unlabelled test images. Everything after the reader (fit, evaluation,
calibration, reports) is shared, so a layout is a reader and nothing else.
"""
import logging
import os
from dataclasses import dataclass, field

from utils import UserError

from orthoad_runtime.transforms import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

MASK_GT127 = "gt127"      # a mask pixel above 127 marks a defect (MVTec AD, BTAD, MVTec AD 2)
MASK_NONZERO = "nonzero"  # any non-zero value marks a defect (VisA, MVTec LOCO)


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        path: the image file.
        label: 0 normal, 1 anomalous.
        defect: 'good' or the defect type (a folder name, or the layout's anomaly label).
        masks: ground-truth mask files: none (normal images, or a defect image without a
            mask: image metrics only), one, or several (MVTec LOCO: one file per defect).
        split: where the image came from ('test', 'calibration', ...).
        mask_rule: how a mask file marks defect pixels (``MASK_GT127`` or ``MASK_NONZERO``).
    """
    path: str
    label: int
    defect: str
    masks: tuple = ()
    split: str = "test"
    mask_rule: str = MASK_GT127

    @property
    def has_mask(self):
        return bool(self.masks)


@dataclass
class CategoryData:
    """One category of a data set, as a reader found it (validated).

    Attributes:
        name: the category (the model's name).
        layout: the reader's name.
        root: the category's folder (the data set root for VisA and plain folders).
        train: normal training images, sorted.
        validation: normal images that set the threshold instead of a hold-out (MVTec AD 2 and
            MVTec LOCO ``validation/good``), sorted; empty elsewhere.
        test: labelled test samples.
        unlabelled: {split: [image paths]} without labels (MVTec AD 2 ``test_private``).
        test_dirs: folders whose images must never calibrate a threshold.
        defects: MVTec LOCO's defect configuration {pixel value: {name, saturation_threshold,
            relative_saturation}}, else None.
        record: facts about how the data was read, stored in the model (JSON-able).
    """
    name: str
    layout: str
    root: str
    train: list
    validation: list = field(default_factory=list)
    test: list = field(default_factory=list)
    unlabelled: dict = field(default_factory=dict)
    test_dirs: list = field(default_factory=list)
    defects: dict = None
    record: dict = field(default_factory=dict)

    def require_train(self, minimum=2):
        if len(self.train) < minimum:
            raise UserError(f"category '{self.name}' ({self.layout} layout, {self.root}) holds "
                            f"{len(self.train)} normal training image(s): at least {minimum} are "
                            "needed")
        return self.train

    def require_test(self):
        """The labelled test samples, every mask checked to have its image's size (file headers
        only: about 40 us a file) so that evaluation cannot stop half-way on one."""
        if not self.test:
            raise UserError(f"category '{self.name}' ({self.layout} layout, {self.root}) has no "
                            "labelled test images: evaluation needs normal and anomalous test "
                            "images (see docs/data_layouts.md)")
        from orthoad_runtime.transforms import image_size
        for s in self.test:
            if s.masks:
                hw = image_size(s.path)
                for m in s.masks:
                    mhw = image_size(m)
                    if mhw != hw:
                        raise UserError(f"mask '{m}' is {mhw[1]}x{mhw[0]} but its image is "
                                        f"{hw[1]}x{hw[0]}: fix the mask")
        return self.test

    def test_files(self):
        """Real paths of every test image, labelled or not (kept out of calibration)."""
        paths = [s.path for s in self.test] + [p for ps in self.unlabelled.values() for p in ps]
        return {os.path.realpath(p) for p in paths}


def is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_images(folder):
    """Sorted image files of a folder (none if it does not exist)."""
    if not os.path.isdir(folder):
        return []
    with os.scandir(folder) as it:
        return sorted(e.path for e in it if is_image(e.name) and e.is_file())


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def check_unique(samples, train=(), validation=()):
    """UserError if an image appears twice, or in two splits."""
    seen = {}
    for split, paths in (("train", train), ("validation", validation),
                         ("test", [s.path for s in samples])):
        for p in paths:
            real = os.path.realpath(p)
            if real in seen:
                where = "twice in the " + split if seen[real] == split else \
                    f"in both the {seen[real]} and the {split} split"
                raise UserError(f"image '{p}' is listed {where}: an image may be used once; "
                                "remove the duplicate")
            seen[real] = split


def warn_masks(name, samples, orphans=()):
    """Log how many defect images lack a mask and how many masks have no image."""
    n_defect = sum(s.label for s in samples)
    missing = sum(1 for s in samples if s.label and not s.has_mask)
    if missing:
        logger.warning("%s: %d of the %d defect images have no mask: they count in the image "
                       "metrics only; the pixel metrics use the %d with a mask and the normal "
                       "images", name, missing, n_defect, n_defect - missing)
    if orphans:
        logger.warning("%s: %d mask(s) have no image (e.g. '%s'): ignored", name, len(orphans),
                       sorted(orphans)[0])
