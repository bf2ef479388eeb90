"""Data-parallel runs with Paddle's own launcher:

    python -m paddle.distributed.launch --nproc_per_node N train.py ...                  # GPUs (NCCL)
    PADDLE_DISTRI_BACKEND=gloo python -m paddle.distributed.launch --nproc_per_node N train.py ...

Every process (rank) runs train.py; ``Group`` is what they share. It only moves state: the
statistics' maths stays in ``models.gaussian.PatchGaussian`` (sums with one common shift add
exactly; ``merge`` is the same addition). A rank whose data or flags differ from rank 0's stops
every rank with a one-line error before anything is merged; a rank that dies makes the others'
next collective fail within gloo's / NCCL's detection time, and the launcher stops them.

Gloo gives up on a collective after 30 s, but ranks can legitimately be minutes apart (rank 0
finalises, saves and evaluates a category while the others wait for the next one). So every
collective starts with a rendezvous on the launcher's TCP store (``_sync``), which waits as long
as needed (``ORTHOAD_DIST_WAIT`` seconds at most, 6 hours by default).
"""
import hashlib
import json
import logging
import os
import time

import numpy as np

from utils import UserError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 32 << 20          # all_reduce in chunks: bounded extra memory at any k
SYNC_TIMEOUT = float(os.environ.get("ORTHOAD_DIST_WAIT", "21600"))   # longest wait for a rank


def world_size():
    """Processes of the launch (1 without paddle.distributed.launch)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def local_size():
    """Processes of the launch on this machine."""
    return int(os.environ.get("PADDLE_LOCAL_SIZE", "1"))


class RankFailed(UserError):
    """Another rank stopped (or could not be reached) during a collective operation."""


class Group:
    """The ranks of a launch (or the single process of a plain run)."""

    def __init__(self, single=False):
        self.world = 1 if single else world_size()
        self.rank = int(os.environ.get("PADDLE_TRAINER_ID", "0")) if self.world > 1 else 0
        self.is_main = self.rank == 0
        if self.world > 1:
            import paddle
            import paddle.distributed as dist
            gpu = paddle.device.is_compiled_with_cuda() and \
                paddle.device.cuda.device_count() > 0
            if not gpu and os.environ.get("PADDLE_DISTRI_BACKEND") != "gloo":
                raise UserError("a distributed run on CPUs needs the gloo backend: launch with "
                                "PADDLE_DISTRI_BACKEND=gloo python -m paddle.distributed.launch "
                                "--nproc_per_node N train.py ...")
            dist.init_parallel_env()
            from paddle.base import core
            self._dist, self._paddle = dist, paddle
            self._store, self._seq = core.create_or_get_global_tcp_store(), 0
            logger.info("rank %d of %d (%s)", self.rank, self.world, "NCCL" if gpu else "gloo")

    def _sync(self):
        """Wait until every rank has reached this point (no time limit of gloo's)."""
        self._seq += 1
        key = f"orthoad/sync/{self._seq}"
        deadline = time.time() + SYNC_TIMEOUT
        try:
            self._store.add(key, 1)
            while int(self._store.get(key)) < self.world:
                if time.time() > deadline:
                    raise RuntimeError(f"waited {SYNC_TIMEOUT:.0f} s for the other ranks")
                time.sleep(0.05)
        except RuntimeError as exc:
            raise RankFailed(f"another rank of the distributed run stopped or cannot be reached "
                             f"({str(exc).strip().splitlines()[-1][:120]}): no model was "
                             "written for this category; see the other ranks' logs") from None

    def _collective(self, fn, *args):
        try:
            return fn(*args)
        except RuntimeError as exc:
            raise RankFailed(f"another rank of the distributed run stopped or cannot be reached "
                             f"({str(exc).strip().splitlines()[-1][:120]}): no model was "
                             "written for this category; see the other ranks' logs") from None

    def shard(self, items, reserve=0):
        """This rank's share of ``items`` when rank 0 also does ``reserve`` items of other work
        (the held-out images): shares of the total work as equal as possible."""
        if self.world == 1:
            return list(items)
        total = len(items) + reserve
        ends = [min(len(items), max(0, round(total * (r + 1) / self.world) - reserve))
                for r in range(self.world)]
        starts = [0] + ends[:-1]
        return list(items[starts[self.rank]:ends[self.rank]])

    def check_same(self, what, payload):
        """Stop every rank with one line if ``payload`` (JSON-able) differs from rank 0's."""
        if self.world == 1:
            return
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str)
                                .encode()).hexdigest()
        digests = self.gather(digest)
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        if bad:
            raise UserError(f"rank {bad[0]} sees a different {what} than rank 0: every rank "
                            "must see the same data and flags (same --data_path contents, same "
                            "command line)")

    def check_launch(self, args, train_files):
        """Every rank was started with the same flags (paths may differ between machines) and
        sees the same training images (names and sizes): ``train_files`` {category: [paths]}."""
        if self.world == 1:
            return
        paths = ("explicit", "cpu_threads", "data_path", "save_path", "calibration_dir",
                 "normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir",
                 "calibration_normal_dir", "calibration_abnormal_dir", "calibration_mask_dir")
        self.check_same("list of training images or flags", {
            "flags": {k: v for k, v in vars(args).items() if k not in paths},
            "images": {c: [(os.path.basename(f), os.path.getsize(f)) for f in files]
                       for c, files in train_files.items()}})

    def gather(self, obj):
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        self._sync()
        out = []
        self._collective(self._dist.all_gather_object, out, obj)
        return out

    def all_sum(self, array):
        """Sum ``array`` (float64 ndarray) over the ranks, in place, in chunks; return it."""
        if self.world == 1:
            return array
        self._sync()
        flat = array.reshape(-1)
        step = max(1, CHUNK_BYTES // flat.itemsize)
        for lo in range(0, flat.size, step):
            t = self._paddle.to_tensor(flat[lo:lo + step])
            self._collective(self._dist.all_reduce, t)
            flat[lo:lo + step] = t.numpy()
        return array

    def common_shift(self, gauss, first, shape):
        """Give ``gauss`` the shift of every rank's first batch together (``first``: this rank's
        first batch of embeddings, or None for an empty shard; ``shape``: (C, k)), so that the
        ranks' sums add."""
        if self.world == 1:
            return gauss
        sums, rows = gauss.row_sums(first, shape)
        total = self.all_sum(np.concatenate([sums.reshape(-1), [float(rows)]]))
        return gauss.set_shift((total[:-1] / total[-1]).reshape(sums.shape))
