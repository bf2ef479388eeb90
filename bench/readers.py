"""The data readers' time on a generated tree of about N files per layout."""
import os

import numpy as np

from datasets.synthetic import generate


def _timed(fn):
    import time
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_readers(n_files, layouts, work, runs=3):
    """Seconds to detect the layout and read every category of a generated tree of about
    ``n_files`` files (one category: 60 % training images, 10 % normal and 15 % defective test
    images with their masks, 48 px), per layout: the median of ``runs`` reads (page cache
    warm), and per file."""
    from datasets.layout_writers import folder_flags
    from datasets.layouts import Dataset, DataOptions, FORMATS
    from datasets.visa import _ROWS
    rows = []
    for layout in layouts:
        root = os.path.join(work, f"readers_{layout}")
        if not os.path.isdir(root):
            generate(root, ("gravel",), n_train=int(0.6 * n_files), n_good=int(0.1 * n_files),
                     n_defect=int(0.15 * n_files), size=48, seed=0, layout=layout)
        if layout == "folder":
            f = folder_flags(root, "gravel")
            opts = DataOptions(data_format="folder", normal_dir=f[f.index("--normal_dir") + 1],
                               normal_test_dir=f[f.index("--normal_test_dir") + 1],
                               abnormal_dir=f[f.index("--abnormal_dir") + 1:
                                              f.index("--mask_dir")],
                               mask_dir=f[f.index("--mask_dir") + 1])
        else:
            opts = DataOptions(data_path=root)
        n = sum(len(files) for _, _, files in os.walk(root)) - 1      # not manifest.json

        def read():
            _ROWS.clear()                                   # VisA's CSV is parsed every time
            ds = Dataset(opts)
            names = ds.select("gravel" if layout == "folder" else "all")
            return [ds.read(c) for c in names]
        times = []
        for _ in range(runs):
            times.append(_timed(read))
        data = read()[0]
        rows.append({"layout": layout, "files": n, "train": len(data.train),
                     "test": len(data.test), "seconds": float(np.median(times)),
                     "us_per_file": 1e6 * float(np.median(times)) / n})
    assert set(layouts) <= set(FORMATS)
    return rows
