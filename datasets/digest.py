"""Content digests of image files, so that an image is recognised whatever its path: the first
8 bytes of the SHA-256 of the file's bytes (collisions: about 1 in 10^19 per pair).

A model records the digests of the images behind its statistics, its threshold (validation
images), its calibration and its test split (``DigestSets``, base64 in the model's metadata:
about 11 bytes an image). A fit refuses a test image whose content equals a training or
validation image; an update skips images already in the statistics and refuses the model's
test, validation and calibration images.
"""
import base64
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

DIGEST_BYTES = 8
ALGORITHM = "sha256 of the file bytes, first 8 bytes"
SETS = ("statistics", "validation", "calibration", "test")
_CACHE = {}


def file_digest(path):
    """The digest (8 bytes) of one file, cached by path, size and modification time."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    d = _CACHE.get(key)
    if d is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        d = _CACHE[key] = h.digest()[:DIGEST_BYTES]
    return d


def digests(paths):
    """[digest] of ``paths``, in order (hashed by a few threads: hashlib releases the GIL)."""
    paths = list(paths)
    if len(paths) < 16:
        return [file_digest(p) for p in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(file_digest, paths))


def encode(values):
    """[digest] -> base64 text."""
    return base64.b64encode(b"".join(values)).decode("ascii")


def decode(text):
    """base64 text -> set of digests (ValueError if malformed)."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % DIGEST_BYTES:
        raise ValueError(f"digest text of {len(raw)} bytes is not a whole number of digests")
    return {raw[i:i + DIGEST_BYTES] for i in range(0, len(raw), DIGEST_BYTES)}


class DigestSets:
    """The digest sets a model records (``meta['digests']``): statistics, validation,
    calibration, test. ``complete`` is True when a fit recorded them (False for a model
    fitted before they were: its statistics hold images no digest names)."""

    def __init__(self, record=None, complete=None):
        record = record or {}
        self.complete = bool(record.get("complete")) if complete is None else complete
        self.sets = {name: decode(record.get(name) or "") for name in SETS}

    def record(self):
        return dict({name: encode(sorted(self.sets[name])) for name in SETS},
                    algorithm=ALGORITHM, complete=self.complete)

    def add(self, name, values):
        self.sets[name].update(values)

    def replace(self, name, values):
        self.sets[name] = set(values)


def duplicates(a_paths, b_paths):
    """[(a path, b path)] of files of ``a_paths`` whose content equals one of ``b_paths``."""
    b = dict(zip(digests(b_paths), b_paths))
    return [(p, b[d]) for p, d in zip(a_paths, digests(a_paths)) if d in b]
