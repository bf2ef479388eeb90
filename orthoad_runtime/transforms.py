"""The ONLY image pre-processing of the project (train, eval, predict and infer all use it).

Images are decoded with PIL and converted to 8-bit RGB (grayscale, palette, RGBA and 16-bit
images included), brought to the model's input geometry (``Preprocess``: resize + centre crop,
or the whole image resized to H x W) with PIL's bilinear filter, and the ImageNet mean / std are
applied after scaling to [0, 1]. Masks use nearest-neighbour resizing, the same geometry, and
value > 127 means defect.
"""
import logging
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _open(path, decode=True):
    """PIL image of ``path`` (decoded, or only its header read), or a UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f"image '{path}' does not exist: check the path")
    if os.path.getsize(path) == 0:
        raise UserError(f"image '{path}' is an empty (zero-byte) file: replace or remove it")
    try:
        img = Image.open(path)
        if decode:
            img.load()
    except UnidentifiedImageError:
        raise UserError(f"cannot read image '{path}' (not an image format PIL recognises): "
                        "replace or remove the file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image '{path}' ({str(exc).splitlines()[0][:80]}): "
                        "replace or remove the file") from None
    return img


def _to_uint8(img):
    """Any PIL image -> uint8 array [H, W] or [H, W, C] without clipping 16-bit data."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        return np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return None


def _pil_rgb(img):
    gray = _to_uint8(img)
    if gray is not None:
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def load_rgb(path):
    """Read an image as uint8 RGB ndarray [H, W, 3]."""
    return _pil_rgb(_open(path))


MAX_PIXELS = 16384 * 16384        # larger images are refused (a decompression bomb, or a mistake)
CAMERA_FRAME = 4096 * 3072         # the service's --max_pixels never defaults below one
PREDICT_MAX_PIXELS = 4 * CAMERA_FRAME   # predict.py, infer.py and the Python API by default
DRAFT_PIXELS = 4 << 20             # JPEGs above this are decoded at a reduced scale (draft)


class TooManyPixels(UserError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""


def open_header(data, what="the image"):
    """A PIL image of encoded bytes with only its header read (size, mode, format); UserError
    if they are empty or no image."""
    import io
    if not data:
        raise UserError(f"{what} is empty: send the bytes of a PNG, JPEG, BMP or TIFF image")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UserError(f"{what} is not an image format PIL recognises: send a PNG, JPEG, BMP "
                        "or TIFF image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{what} cannot be decoded ({str(exc).splitlines()[0][:80]}): send an "
                        "intact image") from None


def check_pixels(width, height, what, max_pixels=None):
    """TooManyPixels if an image of ``width`` x ``height`` (read from its header) has more than
    ``max_pixels`` (default ``MAX_PIXELS``) pixels: refused before anything is decoded."""
    limit = MAX_PIXELS if max_pixels is None else min(int(max_pixels), MAX_PIXELS)
    n = width * height
    if n > limit:
        raise TooManyPixels(f"{what} is {width}x{height} = {n / 1e6:.1f} megapixels, above the "
                            f"limit of {limit / 1e6:.1f} (--max_pixels): send a smaller image")
    return n


def read_rgb(img, what, draft_to=None, path=None):
    """Decode a header-read PIL image -> uint8 RGB [H, W, 3]; a JPEG above ``DRAFT_PIXELS``
    is decoded at the smallest of PIL's draft scales (1/2, 1/4, 1/8) that stays at least
    ``draft_to`` (W, H). ``path``: the file it came from (for the error's wording)."""
    try:
        if draft_to is not None and img.format == "JPEG" and \
                img.width * img.height > DRAFT_PIXELS:
            img.draft("RGB", (int(draft_to[0]), int(draft_to[1])))
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        why = str(exc).splitlines()[0][:80]
        if path is not None:
            raise UserError(f"cannot read image '{path}' ({why}): replace or remove the "
                            "file") from None
        raise UserError(f"{what} cannot be decoded ({why}): send an intact image") from None
    return _pil_rgb(img)


def decode_rgb(data, what="the image", max_pixels=None, draft_to=None):
    """Encoded image bytes (PNG, JPEG, BMP, TIFF) -> uint8 RGB [H, W, 3]; UserError naming why
    not (empty, not an image, corrupt, above ``max_pixels``: checked on the header)."""
    img = open_header(data, what)
    check_pixels(img.width, img.height, what, max_pixels)
    return read_rgb(img, what, draft_to)


def to_rgb(image):
    """An image file path, PIL image or uint8 / uint16 array ([H, W], [H, W, 3] or [H, W, 4])
    -> uint8 RGB [H, W, 3] (the same conversion as for files)."""
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(os.fspath(image))
    if isinstance(image, Image.Image):
        return _pil_rgb(image)
    a = np.asarray(image)
    if a.dtype not in (np.uint8, np.uint16) or a.ndim not in (2, 3) or \
            (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise UserError(f"an image array of {a.dtype} {list(a.shape)} cannot be scored: pass "
                        "uint8 (or uint16) RGB [H, W, 3], RGBA [H, W, 4] or grayscale [H, W]")
    if a.dtype == np.uint16:                      # as 16-bit files are read: no clipping
        top = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def load_mask(path):
    """Read a ground-truth mask as uint8 ndarray [H, W] (0..255)."""
    img = _open(path)
    gray = _to_uint8(img)
    return gray if gray is not None else np.asarray(img.convert("L"))


class Preprocess:
    """The input geometry of a model plus ImageNet normalisation.

    Two geometries:

    * crop (``resize`` given): the shorter side is resized to ``resize`` (PIL bilinear) and the
      centre ``input_size`` square is cut: the MVTec AD protocol (256 / 256, PaDiM's 256 / 224).
      Pixels outside the crop are never scored.
    * whole (``resize`` None): the whole image is resized to ``input_size`` = (H, W), whatever its
      aspect ratio; every pixel is scored.

    Args:
        input_size: (H, W) of the network input (crop: H == W, the crop side).
        resize: shorter side before the centre crop, or None for the whole-image geometry.
    """

    def __init__(self, input_size, resize=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        h, w = (input_size, input_size) if np.isscalar(input_size) else input_size
        self.height, self.width = int(h), int(w)
        self.resize = None if resize is None else int(resize)
        if min(self.height, self.width) < 32:
            raise UserError(f"the input size {self.height}x{self.width} is too small: use at "
                            "least 32 pixels a side")
        if self.resize is not None:
            if self.height != self.width:
                raise UserError("a centre crop is square: use --input_size H W (whole image) "
                                "for a rectangular input")
            if self.height > self.resize:
                raise UserError(f"--crop_size {self.height} is larger than --resize "
                                f"{self.resize}: use a crop no larger than the resized image")
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @property
    def input_hw(self):
        return self.height, self.width

    @property
    def mode(self):
        return "whole" if self.resize is None else "crop"

    def config(self):
        """The parameters as a JSON-able dict (stored in models and deploy.json)."""
        crop = self.mode == "crop"
        return {"mode": self.mode, "input_size": [self.height, self.width],
                "resize": self.resize, "crop_size": self.height if crop else None,
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "interpolation": "PIL bilinear " + ("(shorter side), centre crop" if crop else
                                                    "(whole image, no crop)")}

    @classmethod
    def from_config(cls, cfg):
        """From ``config()``'s dict, or the {resize, crop_size} of models and exports made
        before the geometry was stored."""
        if "input_size" not in cfg:
            return cls(cfg["crop_size"], cfg["resize"], cfg["mean"], cfg["std"])
        return cls(cfg["input_size"], cfg.get("resize"), cfg["mean"], cfg["std"])

    def _resized_size(self, h, w):
        if self.resize is None:
            return self.height, self.width
        s = self.resize
        return (s, max(s, round(w * s / h))) if h <= w else (max(s, round(h * s / w)), s)

    def _crop_box(self, h, w):
        """(left, top, right, bottom) of the input inside the resized image of size h x w."""
        if self.resize is None:
            return 0, 0, w, h
        c = self.height
        top, left = (h - c) // 2, (w - c) // 2
        return left, top, left + c, top + c

    def _geometry(self, array, resample):
        h, w = array.shape[:2]
        nh, nw = self._resized_size(h, w)
        img = Image.fromarray(array).resize((nw, nh), resample=resample)
        if self.resize is None:
            return np.asarray(img)
        return np.asarray(img.crop(self._crop_box(nh, nw)))

    def draft_size(self, original_hw):
        """(W, H) a large JPEG may be decoded at (``read_rgb``): twice the size it is resized
        to, so that the resize still averages over several source pixels."""
        nh, nw = self._resized_size(*original_hw)
        return 2 * nw, 2 * nh

    def load(self, source, what=None, max_pixels=None):
        """An image file path or encoded bytes -> (float32 [3, H, W] network input, (H0, W0)
        original size); a large JPEG decoded at a reduced scale (``read_rgb``), the same in
        every path (fit, evaluation, prediction, the service)."""
        path = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            what = what or "the image"
            img = open_header(bytes(source), what)
        else:
            path = os.fspath(source)
            what = what or f"image '{path}'"
            img = _open(path, decode=False)
        check_pixels(img.width, img.height, what, max_pixels)
        hw = (img.height, img.width)
        return self.image(read_rgb(img, what, self.draft_size(hw), path)), hw

    def image(self, rgb):
        """uint8 [H0, W0, 3] -> float32 [3, H, W] normalised."""
        x = self._geometry(rgb, Image.BILINEAR).astype(np.float32) / 255.0
        return ((x - self.mean) / self.std).transpose(2, 0, 1).copy()

    def mask(self, mask):
        """uint8 [H0, W0] -> bool [H, W]."""
        return self._geometry(mask, Image.NEAREST) > 127

    def unnormalise(self, x):
        """float32 [3, H, W] -> uint8 [H, W, 3] for display."""
        rgb = x.transpose(1, 2, 0) * self.std + self.mean
        return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)

    def scored_box(self, original_hw):
        """(left, top, right, bottom): the pixels of an original H0 x W0 image that are scored."""
        h, w = original_hw
        nh, nw = self._resized_size(h, w)
        left, top, right, bottom = self._crop_box(nh, nw)
        sy, sx = h / nh, w / nw
        return round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)

    def scored_fraction(self, original_hw):
        """Fraction of an original image's pixels that the geometry scores (1.0 without crop)."""
        left, top, right, bottom = self.scored_box(original_hw)
        return (right - left) * (bottom - top) / float(original_hw[0] * original_hw[1])

    def aspect_warning(self, original_hw):
        """A one-line warning if the image's aspect ratio is over 2x off the input's, else None."""
        h, w = original_hw
        ratio = (w / h) / (self.width / self.height)
        if max(ratio, 1.0 / ratio) <= 2.0:
            return None
        if self.resize is None:
            return (f"its aspect ratio {w / h:.2f} is over 2x off the model's "
                    f"{self.width / self.height:.2f}: scored after resizing to "
                    f"{self.height}x{self.width}, distorted")
        return (f"its aspect ratio {w / h:.2f} is over 2x off the square crop: only "
                f"{100 * self.scored_fraction(original_hw):.0f}% of it is scored")

    def to_original(self, amap, original_hw):
        """Map an [H, W] float map back onto the original image grid [H0, W0].

        The inverse of the geometry: the map is resized bilinearly over the scored region;
        pixels outside it (crop geometry only) are NaN, i.e. not scored.
        """
        h, w = original_hw
        left, top, right, bottom = self.scored_box(original_hw)
        out = np.full((h, w), np.nan, dtype=np.float32)
        region = Image.fromarray(np.ascontiguousarray(amap, dtype=np.float32)).resize(
            (right - left, bottom - top), resample=Image.BILINEAR)
        out[top:bottom, left:right] = np.asarray(region)
        return out


def image_size(path):
    """(H, W) of an image file from its header (no decoding)."""
    with _open(path, decode=False) as img:
        return img.size[1], img.size[0]


def list_inputs(path):
    """An image file or a folder of images -> sorted list of image paths (UserError if none);
    masks beside the images (``orthoad_runtime.mask_pairs``) are left out."""
    if os.path.isdir(path):
        from .mask_pairs import split_masks
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        files, masks = split_masks(files)
        if masks:
            logger.info("%d masks beside the images in '%s' are not scored (a file that pairs "
                        "with an image by name is its mask)", len(masks), path)
        if not files:
            raise UserError(f"folder '{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                            "pass an image or a folder of images")
        return files
    if not os.path.isfile(path):
        raise UserError(f"input '{path}' does not exist: pass an image or a folder of images")
    return [path]


BATCH_PIXELS = 16 * 256 * 256     # input pixels per forward pass (caps --batch_size)


def batch_for(batch_size, input_hw):
    """``batch_size`` capped so that one batch holds at most ``BATCH_PIXELS`` input pixels."""
    cap = max(1, BATCH_PIXELS // (input_hw[0] * input_hw[1]))
    if batch_size > cap:
        logger.info("batch size %d -> %d for %dx%d inputs (activation memory)", batch_size, cap,
                    *input_hw)
    return min(batch_size, cap)


class AspectWarnings:
    """One warning line per image whose aspect ratio is over 2x off the model's (the first few
    in full, then a count), for fits and evaluations over many images."""

    def __init__(self, preprocess, limit=3):
        self.pre, self.limit, self.count = preprocess, limit, 0

    def check(self, path, original_hw):
        msg = self.pre.aspect_warning(original_hw)
        if msg:
            self.count += 1
            if self.count <= self.limit:
                logger.warning("%s: %s", path, msg)
        return msg

    def close(self, what):
        if self.count > self.limit:
            logger.warning("%d of %s had an aspect ratio over 2x off the model's (%d shown)",
                           self.count, what, self.limit)
