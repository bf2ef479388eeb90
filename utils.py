"""Shared helpers: user-facing errors, strict CLI parsing, atomic artefact I/O, logging."""
import argparse
import contextlib
import hashlib
import json
import logging
import os
import pickle
import platform
import sys
import tempfile
import warnings

import numpy as np

# Paddle warns at import time about a missing ccache (only relevant to C++ extension builds);
# keep stderr for our own one-line messages. Scripts import this module before Paddle.
warnings.filterwarnings("ignore", message="No ccache found")
os.environ.setdefault("GLOG_minloglevel", "2")   # Paddle's C++ INFO/WARNING chatter

MODEL_FORMAT_VERSION = 1


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2, no traceback."""


# --------------------------------------------------------------------------- command line

class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error message (exit status 2) and no prefix matching of flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def str2bool(value):
    """Parse true/false, yes/no, 1/0 (any case) for flags written as --flag=True."""
    v = str(value).strip().lower()
    if v in ("true", "yes", "1", "y", "t"):
        return True
    if v in ("false", "no", "0", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def positive_int(value):
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{value}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def run_cli(main, get_args, argv=None):
    """Run a script's ``main(get_args(argv))`` with the project's error contract.

    UserError -> one line on stderr and exit 2; Ctrl-C -> one line and exit 130.
    """
    args = get_args(argv)
    setup_logging()
    prog = os.path.basename(sys.argv[0])
    try:
        main(args)
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted by the user; finished results were kept\n")
        return 130
    return 0


def setup_logging(level=logging.INFO):
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s",
                            datefmt="%H:%M:%S")
    # Paddle's download helper logs every retry at INFO; our own message says what failed.
    logging.getLogger("paddle.utils.download").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- atomic files

@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the destination folder; rename it to ``path`` on success.

    A crash or kill leaves the previous file at ``path`` untouched and no partial file under it.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    ensure_dir(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ensure_dir(folder):
    """Create ``folder`` or raise a UserError naming it if that is impossible."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder '{folder}' ({exc.strerror}): choose a "
                        "writable location") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output folder '{folder}' is not writable: choose a writable location")
    return folder


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path, rows, columns):
    """Write dict rows as CSV (atomic); floats with 6 decimals, missing values empty."""
    lines = [",".join(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.6f}" if isinstance(v, float) else str(v))
        lines.append(",".join(cells))
    write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- model files

def library_versions():
    import paddle
    return {"python": platform.python_version(), "paddle": paddle.__version__,
            "numpy": np.__version__}


def save_model(path, meta, arrays):
    """Save a fitted model atomically: ``meta`` (JSON-able dict) and float32 ``arrays``.

    The file is the pickled dict that ``paddle.save`` would write, but with pickle protocol 5,
    which streams each array from its own memory (``paddle.save`` allows protocols up to 4, which
    first copy every array into a bytes object: +1.5 GB of peak memory for wide_resnet50_2 at
    k=300) and loads several times faster. ``paddle.load`` reads it.
    """
    record = {"format_version": MODEL_FORMAT_VERSION, "meta": json.dumps(meta, sort_keys=True)}
    record.update({name: np.ascontiguousarray(a, dtype=np.float32) for name, a in arrays.items()})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(record, fh, protocol=5)
    return path


MODEL_ARRAYS = ("projection", "mean", "precision")


def load_model(path, expect=None):
    """Load a model file written by ``save_model`` and check it against ``expect``.

    Args:
        path: the .pdparams file.
        expect: dict of meta keys (method, arch, k, ...) whose values must match; None values
            are not checked.

    Returns:
        (meta dict, dict of float32 arrays).
    """
    import paddle
    if not os.path.isfile(path):
        raise UserError(f"model file '{path}' does not exist: run train.py with the same "
                        "--save_path, --method, --arch and --k first")
    try:
        record = paddle.load(path, return_numpy=True)
    except Exception as exc:
        raise UserError(f"model file '{path}' is unreadable or truncated ({type(exc).__name__}): "
                        "fit it again with train.py") from None
    if not isinstance(record, dict) or "format_version" not in record or "meta" not in record:
        raise UserError(f"'{path}' is not an OrthoAD-Paddle model file: fit one with train.py")
    version = int(record["format_version"])
    if version > MODEL_FORMAT_VERSION:
        raise UserError(f"model file '{path}' has format version {version}, newer than this "
                        f"code's {MODEL_FORMAT_VERSION}: update OrthoAD-Paddle")
    missing = [name for name in MODEL_ARRAYS if name not in record]
    if missing:
        raise UserError(f"model file '{path}' lacks {', '.join(missing)}: fit it again")
    meta = json.loads(record["meta"])
    for key, value in (expect or {}).items():
        if value is not None and meta.get(key) != value:
            raise UserError(f"model file '{path}' was made with {key}={meta.get(key)}, not "
                            f"{value}: pass --{key} {meta.get(key)} or fit a new model")
    return meta, {name: np.asarray(record[name], dtype=np.float32) for name in MODEL_ARRAYS}


def run_dir(save_path, method, arch, k):
    """The folder of one configuration's models and results."""
    return os.path.join(save_path, f"{method}_{arch}_k{k}")


def model_path(save_path, method, arch, k, category):
    """Where train.py writes (and eval.py / predict.py read) a category's model."""
    return os.path.join(run_dir(save_path, method, arch, k), f"{category}.pdparams")


def sha256_file(path, block=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
