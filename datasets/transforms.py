"""The ONLY image pre-processing of the project (train, eval, predict and infer all use it).

Images are decoded with PIL and converted to 8-bit RGB (grayscale, palette, RGBA and 16-bit
images included), the shorter side is resized to ``resize`` with PIL's bilinear filter, the
centre ``crop_size`` square is cut, and the ImageNet mean / std are applied after scaling to [0, 1].
Masks use nearest-neighbour resizing, the same crop, and value > 127 means defect.
"""
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _open(path):
    if not os.path.isfile(path):
        raise UserError(f"image '{path}' does not exist: check the path")
    if os.path.getsize(path) == 0:
        raise UserError(f"image '{path}' is an empty (zero-byte) file: replace or remove it")
    try:
        img = Image.open(path)
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


def load_rgb(path):
    """Read an image as uint8 RGB ndarray [H, W, 3]."""
    img = _open(path)
    gray = _to_uint8(img)
    if gray is not None:
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def load_mask(path):
    """Read a ground-truth mask as uint8 ndarray [H, W] (0..255)."""
    img = _open(path)
    gray = _to_uint8(img)
    return gray if gray is not None else np.asarray(img.convert("L"))


class Preprocess:
    """Resize (shorter side) + centre crop + ImageNet normalisation.

    Args:
        resize: length of the shorter side after resizing.
        crop_size: side S of the centre crop (S <= resize).
    """

    def __init__(self, resize=256, crop_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if crop_size > resize:
            raise UserError(f"--crop_size {crop_size} is larger than --resize {resize}: use a "
                            "crop no larger than the resized image")
        if crop_size < 32:
            raise UserError(f"--crop_size {crop_size} is too small: use at least 32 pixels")
        self.resize = int(resize)
        self.crop_size = int(crop_size)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def config(self):
        """The parameters as a JSON-able dict (written next to exported models)."""
        return {"resize": self.resize, "crop_size": self.crop_size,
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "interpolation": "PIL bilinear (shorter side), centre crop"}

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg["resize"], cfg["crop_size"], cfg["mean"], cfg["std"])

    def _resized_size(self, h, w):
        s = self.resize
        return (s, max(s, round(w * s / h))) if h <= w else (max(s, round(h * s / w)), s)

    def _crop_box(self, h, w):
        c = self.crop_size
        top, left = (h - c) // 2, (w - c) // 2
        return left, top, left + c, top + c

    def _geometry(self, array, resample):
        h, w = array.shape[:2]
        nh, nw = self._resized_size(h, w)
        img = Image.fromarray(array).resize((nw, nh), resample=resample)
        return np.asarray(img.crop(self._crop_box(nh, nw)))

    def image(self, rgb):
        """uint8 [H, W, 3] -> float32 [3, S, S] normalised."""
        x = self._geometry(rgb, Image.BILINEAR).astype(np.float32) / 255.0
        return ((x - self.mean) / self.std).transpose(2, 0, 1).copy()

    def mask(self, mask):
        """uint8 [H, W] -> bool [S, S]."""
        return self._geometry(mask, Image.NEAREST) > 127

    def unnormalise(self, x):
        """float32 [3, S, S] -> uint8 [S, S, 3] for display."""
        rgb = x.transpose(1, 2, 0) * self.std + self.mean
        return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)

    def to_original(self, amap, original_hw):
        """Map an [S, S] float map back onto the original image grid [H, W].

        The inverse of resize + crop: the map is resized bilinearly over the cropped region;
        pixels outside the crop (only when crop_size < resize) get the map's minimum.
        """
        h, w = original_hw
        nh, nw = self._resized_size(h, w)
        left, top, right, bottom = self._crop_box(nh, nw)
        sy, sx = h / nh, w / nw
        box = (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
        out = np.full((h, w), float(amap.min()), dtype=np.float32)
        region = Image.fromarray(np.ascontiguousarray(amap, dtype=np.float32)).resize(
            (box[2] - box[0], box[3] - box[1]), resample=Image.BILINEAR)
        out[box[1]:box[3], box[0]:box[2]] = np.asarray(region)
        return out


def list_inputs(path):
    """An image file or a folder of images -> sorted list of image paths (UserError if none)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not files:
            raise UserError(f"folder '{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                            "pass an image or a folder of images")
        return files
    if not os.path.isfile(path):
        raise UserError(f"input '{path}' does not exist: pass an image or a folder of images")
    return [path]
