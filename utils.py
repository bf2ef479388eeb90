"""The repository's helpers: the runtime's own (``orthoad_runtime.util``: one-line errors, strict
command lines, atomic writes, logging) and what only fitting needs (library versions,
huge-page arrays, run folders, progress bars).

Importing this module configures the process for Paddle (``orthoad_runtime.configure_paddle``):
the scripts import it first, before Paddle loads.
"""
import mmap
import os
import platform

import numpy as np

from orthoad_runtime import configure_paddle
from orthoad_runtime.errors import UserError
from orthoad_runtime.util import (ArgumentParser, CsvLog, atomic_path, ensure_dir,
                                  positive_int, run_cli, setup_logging, sha256_file, str2bool,
                                  write_csv, write_failed, write_json, write_text)

configure_paddle()
__all__ = ["UserError", "ArgumentParser", "CsvLog", "atomic_path", "ensure_dir", "positive_int",
           "run_cli", "setup_logging", "sha256_file", "str2bool", "write_csv", "write_failed",
           "write_json", "write_text", "library_versions", "hugepage_empty", "run_dir",
           "model_path", "progress"]



def library_versions():
    import paddle
    return {"python": platform.python_version(), "paddle": paddle.__version__,
            "numpy": np.__version__}


def hugepage_empty(shape, dtype=np.float64):
    """Zero-filled array backed, on Linux, by transparent huge pages (plain np.zeros if small).

    The Gaussian's sums and precisions are 0.16-2.9 GB; with 4 KiB pages, merely touching them
    the first time costs seconds of page faults on a virtual machine (3.4 s for 2.9 GB measured;
    0.6 s with huge pages).
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < (64 << 20) or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros(shape, dtype)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return np.zeros(shape, dtype)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)     # anonymous memory reads as 0


def run_dir(save_path, method, arch, k, coreset_ratio=0.1):
    """The folder of one configuration's models and results: <method>_<arch>_k<k>, or for
    PatchCore patchcore_<arch>_c<coreset percent> (k does not apply)."""
    if method == "patchcore":
        return os.path.join(save_path, f"patchcore_{arch}_c{100 * coreset_ratio:g}")
    return os.path.join(save_path, f"{method}_{arch}_k{k}")


def model_path(save_path, method, arch, k, category, coreset_ratio=0.1):
    """Where train.py writes (and eval.py / predict.py read) a category's model."""
    return os.path.join(run_dir(save_path, method, arch, k, coreset_ratio),
                        f"{category}.safetensors")


def progress(total, desc, unit="img"):
    """A progress bar on a terminal (nothing when stderr is redirected)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=1.0, disable=None,
                dynamic_ncols=True)
