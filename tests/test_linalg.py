"""The per-position BLAS / LAPACK loops against NumPy float64, on every code path."""
import numpy as np
import pytest

from models import linalg
from models.gaussian import PatchGaussian
from utils import UserError


def _sums(rng, n_pos=150, n=40, k=7):
    y = rng.standard_normal((n_pos, n, k)) * rng.uniform(0.5, 3.0, (n_pos, 1, k))
    s1 = y.sum(axis=1)
    s2 = np.einsum("pnk,pnl->pkl", y, y)
    cov = (s2 - s1[:, :, None] * s1[:, None, :] / n) / (n - 1) + 0.01 * np.eye(k)
    return y, s1, s2, cov


@pytest.fixture(params=["ctypes", "f2py"])
def path(request, monkeypatch):
    """Run each test through the GIL-free ctypes routines and the single-thread f2py fallback."""
    if request.param == "ctypes":
        if linalg._ROUTINES is None:
            pytest.skip("SciPy's cython_blas / cython_lapack pointers are unavailable")
    else:
        monkeypatch.setattr(linalg, "_ROUTINES", None)
    return request.param


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_syrk_update_accumulates_the_upper_triangle(path, threads):
    rng = np.random.default_rng(0)
    buf = rng.standard_normal((150, 12, 7)).astype(np.float32)
    s2 = np.full((150, 7, 7), 0.5)
    linalg.syrk_update(s2, buf, 9, threads=threads)             # only the first 9 images
    b = buf[:, :9].astype(np.float64)
    ref = 0.5 + np.einsum("pmk,pml->pkl", b, b)
    iu = np.triu_indices(7)
    np.testing.assert_allclose(s2[:, iu[0], iu[1]], ref[:, iu[0], iu[1]], rtol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_precision_and_quadratic_forms_match_numpy_inverse(path, threads):
    rng = np.random.default_rng(1)
    _, s1, s2, cov = _sums(rng)
    upper_only = np.triu(s2) + np.tril(np.full_like(s2, np.nan), -1)   # lower part never read
    out = np.empty(s2.shape, np.float32)
    linalg.precision_from_sums(s1, upper_only, 40, 0.01, out, threads=threads)
    inv = np.linalg.inv(cov)
    np.testing.assert_allclose(out, inv, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out, out.transpose(0, 2, 1))
    y = rng.standard_normal((5, 150, 7)).astype(np.float32)
    mean = rng.standard_normal((150, 7))
    q = linalg.quadratic_forms(s1, upper_only, 40, 0.01, y, mean, threads=threads)
    d = y - mean
    np.testing.assert_allclose(q, np.einsum("jpk,pkl,jpl->jp", d, inv, d), rtol=1e-10)


def test_worker_errors_reach_the_caller(path):
    rng = np.random.default_rng(2)
    _, s1, s2, _ = _sums(rng)
    s2[97] = -np.eye(7) * 1e6                                     # position 97 is not PD
    with pytest.raises(linalg.NotPositiveDefinite) as err:
        linalg.precision_from_sums(s1, s2, 40, 0.01, np.empty(s2.shape, np.float32), threads=2)
    assert err.value.position == 97


def test_gaussian_reports_a_non_positive_definite_covariance():
    g = PatchGaussian(eps=-5.0).partial_fit(np.zeros((3, 2, 4), dtype=np.float32))
    with pytest.raises(UserError, match="not positive definite.*increase --eps"):
        g.finalize()


def test_held_out_distances_equal_the_precision_of_the_same_sums():
    rng = np.random.default_rng(3)
    y = (50 + rng.standard_normal((30, 70, 5))).astype(np.float32)
    g = PatchGaussian(buffer=8).partial_fit(y)
    test = (50 + 2 * rng.standard_normal((4, 70, 5))).astype(np.float32)
    q = g.squared_distances(test)
    g.finalize()
    d = test.astype(np.float64) - g.mean_
    ref = np.einsum("bpk,pkl,bpl->bp", d, g.precision_.astype(np.float64), d)
    assert q.shape == (4, 70)
    np.testing.assert_allclose(q, ref, rtol=1e-4)


def test_large_arrays_come_zeroed_and_writable():
    a = linalg.zeros((9, 1024, 1024), np.float64)                 # 72 MiB: the mmap path
    assert a.shape == (9, 1024, 1024) and a.dtype == np.float64 and a.flags.writeable
    assert not a[::97, ::101, ::103].any()
    a[8, -1, -1] = 3.0
    assert a.sum() == 3.0


def test_self_check_rejects_routines_that_compute_nothing():
    if linalg._ROUTINES is None:
        pytest.skip("SciPy's cython_blas / cython_lapack pointers are unavailable")
    assert linalg._self_check(linalg._ROUTINES)
    noop = linalg.ctypes.CFUNCTYPE(None, *([linalg._P] * 10))(lambda *args: None)
    assert not linalg._self_check(dict(linalg._ROUTINES, dsyrk=noop))


def test_fast_path_is_on_where_scipy_exports_the_routines():
    """Fails loudly if the GIL-free ctypes path is off on a machine where SciPy exports the four
    routines: the silent single-thread fallback would otherwise hide a regression."""
    from scipy.linalg import cython_blas, cython_lapack
    exported = "dsyrk" in cython_blas.__pyx_capi__ and all(
        name in cython_lapack.__pyx_capi__ for name in ("dpotrf", "dpotri", "dpotrs"))
    if not exported:
        pytest.skip("this SciPy does not export the routines: the f2py path is expected")
    assert linalg._ROUTINES is not None, linalg.describe()
    assert linalg.describe()["path"] == "ctypes"


def test_thread_setting_is_used_and_reported():
    try:
        linalg.set_threads(1)
        assert linalg.n_threads() == 1 and linalg.describe()["threads"] == 1
        linalg.set_threads(3)
        assert linalg.n_threads() == 3
    finally:
        linalg.set_threads(None)
    assert linalg.n_threads() == len(__import__("os").sched_getaffinity(0))
