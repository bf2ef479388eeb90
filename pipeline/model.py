"""A fitted model: its metadata, its arrays and the backbone they belong to.

The model file (``modelfile``) holds the projection W, the Gaussian (mean, precision) and the
metadata, or for PatchCore the memory bank; the backbone is rebuilt from the weights it records
and checked by fingerprint. The detector (``models.orthoad.OrthoAD`` or
``models.patchcore.PatchCore``) is built on first use.
"""
import logging
from dataclasses import dataclass, field

from orthoad_runtime.transforms import Preprocess
from modelfile import load_checked, save_model
from orthoad_runtime.ignore import apply_ignore, combine, patch_mask
from models.orthoad import OrthoAD
from models.patchcore import PatchCore

from .backbones import backbone_for_meta

logger = logging.getLogger(__name__)


@dataclass
class Model:
    """meta: JSON-able dict; arrays: {name: ndarray}: projection [F, k], mean [C, k], precision
    [C, k, k] (PatchCore: bank [M, D]), optionally ignore [H, W] (uint8) and the packed sums
    (``--save_sums``); backbone:
    ``models.backbone.Backbone``; extra_ignore: an ignore mask given at prediction time."""
    meta: dict
    arrays: dict
    backbone: object
    path: str = None
    _detector: object = field(default=None, repr=False)
    _scorer: object = field(default=None, repr=False)
    engine: str = "dygraph"
    extra_ignore: object = field(default=None, repr=False)

    @property
    def detector(self):
        """The scoring layer (image -> anomaly map, image score), built once."""
        if self._detector is None:
            a = self.arrays
            if self.meta["method"] == "patchcore":
                pc = self.meta["patchcore"]
                self._detector = PatchCore(self.backbone, self.preprocess.input_hw, pc["dim"],
                                           a["bank"], pc["neighbours"])
            else:
                self._detector = OrthoAD(self.backbone, a["projection"],
                                         self.preprocess.input_hw, a["mean"], a["precision"],
                                         self.meta.get("cell", 1))
        return self._detector

    @property
    def precision(self):
        """'int8' if the model was fitted with the int8 backbone (its statistics and thresholds
        belong to it), else 'fp32'."""
        return self.meta.get("precision", "fp32")

    def use_engine(self, requested, cache_dir=None, threads=None):
        """Score with ``requested`` (``--engine``; graphs cached in ``cache_dir``, default the
        user's graph cache); an int8 model on its int8 backbone."""
        from .graphs import scorer
        int8 = self.meta["int8"] if self.precision == "int8" else None
        self._scorer, self.engine = scorer(requested, self.detector, self.arrays, cache_dir,
                                           threads, int8)
        return self

    @property
    def ignore(self):
        """bool [H, W] of the pixels never scored (the model's ignore mask and any given at
        prediction time), or None."""
        stored = self.arrays.get("ignore")
        return combine(None if stored is None else stored.astype(bool), self.extra_ignore)

    def run(self, x, ignore=None):
        """x float32 [B, 3, H, W] ndarray -> the engine's (maps [B, H, W], scores [B]), the
        maps before any ignore mask; PatchCore's scores over the patches ``ignore`` (bool
        [H, W] or None) leaves."""
        if self._scorer is None:
            self.use_engine("dygraph", None)
        return self._scorer(x, patch_mask(ignore, self.detector.grid_hw))

    def score(self, x):
        """x float32 [B, 3, H, W] ndarray -> (maps [B, H, W] with NaN on ignored pixels,
        image scores [B]: the max over the other pixels, or PatchCore's Eq. 7) ndarrays."""
        ignore = self.ignore
        maps, scores = self.run(x, ignore)
        return apply_ignore(maps, ignore, None if self.detector.score_from_map else scores)

    @property
    def preprocess(self):
        """The model's input geometry and normalisation (``orthoad_runtime.transforms.Preprocess``)."""
        geometry = self.meta.get("geometry")
        if geometry is None:                   # models made before the geometry was stored
            return Preprocess(self.meta["crop_size"], self.meta["resize"])
        return Preprocess.from_config(geometry)

    @property
    def threshold(self):
        return (self.meta.get("threshold") or {}).get("image")

    def save(self, path):
        save_model(path, self.meta, self.arrays)
        self.path = path
        return path


def load(path, expect=None, weights=None):
    """Model file -> Model, with its backbone rebuilt and checked."""
    meta, arrays = load_checked(path, expect)
    return Model(meta, arrays, backbone_for_meta(meta, weights), path)
