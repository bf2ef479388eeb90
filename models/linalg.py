"""Dense linear algebra on thousands of small per-position matrices, on every CPU core.

The Gaussian of every patch position needs one BLAS dsyrk per buffer of images and one LAPACK
Cholesky factorisation and inverse (dpotrf + dpotri) at the end: 4096 independent k x k problems at
a 256 px input. SciPy's f2py wrappers hold the GIL, so a thread pool gains nothing with them. The
same routines are called here through the C function pointers that ``scipy.linalg.cython_blas`` and
``scipy.linalg.cython_lapack`` export, by ctypes, which releases the GIL for each call: threads then
run on separate cores. Where those pointers are not available the f2py wrappers are used in one
thread (same routines, same results).

Memory layout: a C-order float64 [k, k] matrix seen by Fortran is its transpose; every routine here
works on the Fortran 'L' (lower) triangle, which is the C-order UPPER triangle.
"""
import ctypes
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.linalg import blas, lapack

from utils import hugepage_empty

logger = logging.getLogger(__name__)

_P = ctypes.c_void_p
_LOWER = ctypes.c_char_p(b"L")
_NOTRANS = ctypes.c_char_p(b"N")


def _capsule_pointer(capsule):
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


def _load_routines():
    """{name: ctypes function} for dsyrk, dpotrf, dpotri, dpotrs, or None if unavailable."""
    global _FALLBACK_REASON
    try:
        from scipy.linalg import cython_blas, cython_lapack
        n_args = {"dsyrk": 10, "dpotrf": 5, "dpotri": 5, "dpotrs": 8}
        table = {"dsyrk": cython_blas.__pyx_capi__}
        routines = {}
        for name, n in n_args.items():
            capsule = table.get(name, cython_lapack.__pyx_capi__)[name]
            # CFUNCTYPE (not PYFUNCTYPE): the GIL is released while the routine runs
            routines[name] = ctypes.CFUNCTYPE(None, *([_P] * n))(_capsule_pointer(capsule))
        return routines
    except Exception as exc:  # noqa: BLE001 - any failure means: use the f2py wrappers
        _FALLBACK_REASON = (f"SciPy's cython_blas / cython_lapack pointers are unavailable "
                            f"({type(exc).__name__}: {exc})")
        return None


_FALLBACK_REASON = None
_ROUTINES = _load_routines()


_THREADS = None


def set_threads(n):
    """Use ``n`` worker threads for the per-position loops (None: every CPU this process may use)."""
    global _THREADS
    _THREADS = None if n is None else max(1, int(n))


def n_threads():
    """Worker threads for the per-position loops: ``set_threads``'s value, else the CPUs this
    process may run on."""
    if _THREADS is not None:
        return _THREADS
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def describe():
    """Which implementation the per-position loops use, for logs and model metadata."""
    if _ROUTINES is None:
        return {"path": "f2py", "threads": 1, "reason": _FALLBACK_REASON}
    return {"path": "ctypes", "threads": n_threads()}


def zeros(shape, dtype=np.float64):
    """Zero-filled array on transparent huge pages (``utils.hugepage_empty``)."""
    return hugepage_empty(shape, dtype)


def for_positions(fn, n_positions, threads=None, chunk=64):
    """Run fn(lo, hi) over [0, n_positions) in chunks, on ``threads`` threads (default: all CPUs).

    Exceptions raised by ``fn`` propagate (the first one, after the other workers stop).
    """
    threads = n_threads() if threads is None else threads
    if _ROUTINES is None or threads <= 1 or n_positions <= chunk:
        fn(0, n_positions)
        return
    from threadpoolctl import threadpool_limits
    starts = list(range(0, n_positions, chunk))
    lock, failed = threading.Lock(), []

    def worker():
        while not failed:
            with lock:
                if not starts:
                    return
                lo = starts.pop(0)
            try:
                fn(lo, min(lo + chunk, n_positions))
            except BaseException as exc:  # re-raised in the caller's thread
                failed.append(exc)

    # one BLAS thread per worker: the parallelism is over positions
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(worker) for _ in range(threads)]:
            f.result()
    if failed:
        raise failed[0]


class _Ints:
    """ctypes ints kept alive for a loop, passed by address."""

    def __init__(self, **values):
        self._c = {k: ctypes.c_int(v) for k, v in values.items()}
        self.addr = {k: ctypes.addressof(c) for k, c in self._c.items()}

    def value(self, name):
        return self._c[name].value


_ONE = ctypes.c_double(1.0)


def syrk_update(s2, buf, m, threads=None):
    """s2[p] += buf[p, :m].T @ buf[p, :m] for every position p, on the C-upper triangle only.

    Args:
        s2: float64 C-contiguous [P, k, k] accumulator (only its upper triangle is maintained).
        buf: float32 [P, M, k] with M >= m.
    """
    n_pos, k, _ = s2.shape

    def run(lo, hi):
        a = np.empty((m, k))
        if _ROUTINES is None:
            for p in range(lo, hi):
                np.copyto(a, buf[p, :m])
                blas.dsyrk(1.0, a.T, beta=1.0, c=s2[p].T, trans=0, lower=1, overwrite_c=1)
            return
        dsyrk = _ROUTINES["dsyrk"]
        ints = _Ints(n=k, m=m, ld=k)
        i = ints.addr
        one = ctypes.addressof(_ONE)
        base, step = s2.ctypes.data, s2.strides[0]
        for p in range(lo, hi):
            np.copyto(a, buf[p, :m])
            # Fortran: C (k x k, 'L') += A A^T with A = a seen as k x m (lda = k)
            dsyrk(_LOWER, _NOTRANS, i["n"], i["m"], one, a.ctypes.data, i["ld"], one,
                  base + p * step, i["ld"])

    for_positions(run, n_pos, threads)


def symmetric_from_upper(a, out=None):
    """Full symmetric matrices [..., k, k] from the upper triangle of ``a`` (lower part ignored)."""
    upper = np.triu(a)
    return np.add(upper, np.swapaxes(np.triu(upper, 1), -1, -2), out=out, casting="unsafe")


def _covariance(s1, s2, p, n, ridge, out):
    """out (C-upper triangle) = regularised covariance at position p from the shifted sums."""
    np.multiply.outer(s1[p], s1[p] / n, out=out)
    np.subtract(s2[p], out, out=out)
    out /= n - 1
    out += ridge


class NotPositiveDefinite(ValueError):
    def __init__(self, position, info):
        super().__init__(f"covariance at position {position} is not positive definite "
                         f"(LAPACK info {info})")
        self.position, self.info = position, info


def precision_from_sums(s1, s2, n, eps, out, threads=None):
    """out[p] = float32 inverse of the covariance (s2[p] - s1 s1^T / n) / (n - 1) + eps I.

    s2 holds sums in its C-upper triangle only. Cholesky factorisation and inverse (dpotrf +
    dpotri) in float64. Raises ``NotPositiveDefinite``.
    """
    n_pos, k = s1.shape
    ridge = eps * np.eye(k)

    def run(lo, hi):
        cov = np.empty((k, k))
        ints = _Ints(n=k, info=0)
        i = ints.addr
        for p in range(lo, hi):
            _covariance(s1, s2, p, n, ridge, cov)
            if _ROUTINES is None:
                chol, info = lapack.dpotrf(cov.T, lower=1, clean=0, overwrite_a=1)
                if info == 0:
                    inv, info = lapack.dpotri(chol, lower=1, overwrite_c=1)
                    upper = inv.T
            else:
                _ROUTINES["dpotrf"](_LOWER, i["n"], cov.ctypes.data, i["n"], i["info"])
                if ints.value("info") == 0:
                    _ROUTINES["dpotri"](_LOWER, i["n"], cov.ctypes.data, i["n"], i["info"])
                info, upper = ints.value("info"), cov
            if info != 0:
                raise NotPositiveDefinite(p, info)
            symmetric_from_upper(upper, out=out[p])

    for_positions(run, n_pos, threads)
    return out


def quadratic_forms(s1, s2, n, eps, y, mean, threads=None):
    """q[j, p] = d^T Sigma_p^-1 d with d = y[j, p] - mean[p], without forming the inverse
    (dpotrf + dpotrs, float64); the deviations are formed per position, never all at once.

    Args:
        s1, s2, n, eps: the shifted sums as in ``precision_from_sums``.
        y: [J, P, k] embeddings (any float dtype).
        mean: float64 [P, k] position means.

    Returns:
        float64 [J, P].
    """
    n_pos, k = s1.shape
    n_rhs = y.shape[0]
    q = np.empty((n_pos, n_rhs))
    ridge = eps * np.eye(k)

    def run(lo, hi):
        cov = np.empty((k, k))
        d = np.empty((n_rhs, k))
        x = np.empty((n_rhs, k))
        ints = _Ints(n=k, nrhs=n_rhs, info=0)
        i = ints.addr
        for p in range(lo, hi):
            _covariance(s1, s2, p, n, ridge, cov)
            np.subtract(y[:, p], mean[p], out=d)
            if _ROUTINES is None:
                chol, info = lapack.dpotrf(cov.T, lower=1, clean=0, overwrite_a=1)
                if info == 0:
                    sol, info = lapack.dpotrs(chol, d.T, lower=1)
                    np.copyto(x, sol.T)
            else:
                np.copyto(x, d)
                _ROUTINES["dpotrf"](_LOWER, i["n"], cov.ctypes.data, i["n"], i["info"])
                if ints.value("info") == 0:
                    # Fortran B = x seen as k x J (ldb = k): solves Sigma X = B in place
                    _ROUTINES["dpotrs"](_LOWER, i["n"], i["nrhs"], cov.ctypes.data, i["n"],
                                        x.ctypes.data, i["n"], i["info"])
                info = ints.value("info")
            if info != 0:
                raise NotPositiveDefinite(p, info)
            q[p] = np.einsum("jk,jk->j", d, x)

    for_positions(run, n_pos, threads)
    return q.T


def _self_check(routines):
    """The routines through ctypes agree with NumPy on a tiny problem (else they are not used)."""
    try:
        a = np.array([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]])              # m = 2 images, k = 3
        c = np.eye(3)
        ints = _Ints(n=3, m=2, info=0)
        i = ints.addr
        one = ctypes.addressof(_ONE)
        routines["dsyrk"](_LOWER, _NOTRANS, i["n"], i["m"], one, a.ctypes.data, i["n"], one,
                          c.ctypes.data, i["n"])
        full = np.eye(3) + a.T @ a
        if not np.allclose(np.triu(c), np.triu(full)):
            return False
        routines["dpotrf"](_LOWER, i["n"], c.ctypes.data, i["n"], i["info"])
        if ints.value("info") != 0:
            return False
        routines["dpotri"](_LOWER, i["n"], c.ctypes.data, i["n"], i["info"])
        return ints.value("info") == 0 and np.allclose(symmetric_from_upper(c),
                                                        np.linalg.inv(full))
    except Exception:  # noqa: BLE001
        return False


if _ROUTINES is not None and not _self_check(_ROUTINES):
    _ROUTINES = None
    _FALLBACK_REASON = "the ctypes routines disagreed with NumPy in the self-check"
if _ROUTINES is None:
    logger.warning("per-position BLAS / LAPACK loops run single-threaded through SciPy's "
                   "wrappers: %s", _FALLBACK_REASON)
