"""Position-keyed multi-scale noise for the demo dataset.

Every value is a pure function of (seed, stream, global pixel row, global pixel column,
hour), so a window of the field computed alone equals the same window cut from any
larger computation, whatever the chunking, bit for bit. That is what makes the demo
generator chunkable with dask and consistent between sub-windows.

Construction (value noise, sum of octaves): at octave ``L`` (lattice spacing in pixels)
Gaussian values ``g(k, i, j)`` sit on a space-time lattice; each value comes from an
integer hash of (seed, stream, octave, k, i, j) (SplitMix64 finaliser), not from a
sequential random stream, so no state is shared between chunks. Values are
interpolated to pixels with the cubic B-spline (C2-smooth) in row, column and time;
the lattice is advected at a constant velocity (pixels per hour) so fields move and
evolve smoothly hour to hour, with a decorrelation time ``tau(L)`` that grows with
scale. Octave amplitudes ``(L / L_max)^H`` give a 1-D power spectrum close to
``k^-(2H+1)`` between the smallest and the largest lattice spacing (H = 1/3 gives the
Kolmogorov k^-5/3, H = 1 gives k^-3).

The interpolation is written as fixed-order sums of gathered lattice values (4 taps
per axis) rather than matrix products: BLAS may sum in a size-dependent order, which
would break bitwise equality between chunkings.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy.special import ndtri

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic is the point: no warnings)."""
    with np.errstate(over="ignore"):
        z = z ^ (z >> _U64(30))
        z = z * _U64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> _U64(27))
        z = z * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _key(*parts: int) -> np.uint64:
    """Scalar hash of a few integers (seed, stream, octave)."""
    h = np.array(_GOLDEN, dtype=np.uint64)
    for p in parts:
        h = _mix(h ^ np.array((int(p) * _GOLDEN + 0x632BE59BD9B4E019) & _MASK64, dtype=np.uint64))
    return h


def _as_u64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64).view(np.uint64)


def hashed_gaussian(key: np.uint64, *coords: np.ndarray) -> np.ndarray:
    """Standard-normal values keyed by ``key`` and integer coordinates (broadcast), float32."""
    h = np.asarray(key, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in coords:
            h = _mix(h ^ (_as_u64(c) * _U64(_GOLDEN)))
    u = ((h >> _U64(11)).astype(np.float64) + 0.5) * 2.0**-53  # uniform in (0, 1)
    return ndtri(u).astype(np.float32)


def hashed_uniform(key: np.uint64, *coords: int) -> float:
    """One uniform number in [0, 1) keyed by ``key`` and integers."""
    h = np.asarray(key, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in coords:
            h = _mix(h ^ (_as_u64(np.asarray(c)) * _U64(_GOLDEN)))
    return float((int(h.reshape(-1)[0]) >> 11) * 2.0**-53)


# ----------------------------------------------------------------------------- B-splines


def _bspline(f: np.ndarray) -> list[np.ndarray]:
    """Cubic B-spline weights of the 4 lattice nodes k-1..k+2 at fraction f in [0, 1)."""
    f2 = f * f
    f3 = f2 * f
    return [(1 - f) ** 3 / 6, (3 * f3 - 6 * f2 + 4) / 6, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6, f3 / 6]


def _bspline_d(f: np.ndarray) -> list[np.ndarray]:
    """Derivative (per lattice unit) of the cubic B-spline weights."""
    f2 = f * f
    return [-((1 - f) ** 2) / 2, (3 * f2 - 4 * f) / 2, (-3 * f2 + 2 * f + 1) / 2, f2 / 2]


@functools.cache
def _mean_sq(derivative: bool) -> float:
    """Mean over the fraction of the summed squared weights: variance of interpolated noise."""
    f = (np.arange(4096) + 0.5) / 4096
    w = _bspline_d(f) if derivative else _bspline(f)
    return float(np.mean(sum(wi**2 for wi in w)))


class _Axis:
    """Interpolation taps of one axis: lattice index range, per-pixel offsets and weights."""

    def __init__(self, pos: np.ndarray, derivative: bool = False):
        k = np.floor(pos)
        f = pos - k
        k = k.astype(np.int64)
        self.lo = int(k.min()) - 1
        self.n = int(k.max()) + 3 - self.lo
        self.idx = k - 1 - self.lo
        self.w = [w.astype(np.float32) for w in _bspline(f)]
        self.dw = [w.astype(np.float32) for w in _bspline_d(f)] if derivative else None

    @property
    def nodes(self) -> np.ndarray:
        return np.arange(self.lo, self.lo + self.n, dtype=np.int64)


def _interp_cols(values: np.ndarray, ax: _Axis, weights: list[np.ndarray]) -> np.ndarray:
    """(nr, n_nodes_c) -> (nr, nx): fixed-order 4-tap sum along columns."""
    out = weights[0] * values[:, ax.idx]
    for b in range(1, 4):
        out = out + weights[b] * values[:, ax.idx + b]
    return out


def _interp_rows(values: np.ndarray, ax: _Axis, weights: list[np.ndarray]) -> np.ndarray:
    """(n_nodes_r, nx) -> (ny, nx): fixed-order 4-tap sum along rows."""
    out = weights[0][:, None] * values[ax.idx, :]
    for a in range(1, 4):
        out = out + weights[a][:, None] * values[ax.idx + a, :]
    return out


def fbm(
    seed: int,
    stream: int,
    rows: np.ndarray,
    cols: np.ndarray,
    hours: np.ndarray | None = None,
    *,
    scales: Sequence[int],
    hurst: float,
    tau: float = 3.0,
    advect: tuple[float, float] = (0.0, 0.0),
    outputs: Sequence[str] = ("value",),
    streamfunction: bool = False,
) -> dict[str, np.ndarray]:
    """Multi-octave B-spline value noise on the grid ``rows x cols`` (global pixel coordinates).

    Args:
        seed, stream: keys of the noise (stream tells apart the fields of one seed).
        rows, cols: 1-D global pixel coordinates (floats allowed, e.g. block centres).
        hours: 1-D hours since the demo epoch, or None for a time-invariant field.
        scales: lattice spacings L in pixels (octaves).
        hurst: H; octave amplitude (L / max L)^H, 1-D spectrum ~ k^-(2H+1).
        tau: decorrelation time in hours at L = 8 px; tau(L) = tau (L / 8)^(2/3)
            (eddy turnover time scaling).
        advect: lattice velocity (rows, cols) in pixels per hour.
        outputs: any of "value", "d_row", "d_col" (derivatives per pixel).
        streamfunction: build psi = sum_L (L/Lmax)^H L n_L / s, whose gradient
            (d_row, d_col) has unit variance and Hurst exponent H; "value" is then psi in
            pixel units (so psi [m2 s-1] = sigma_u [m s-1] * dx [m] * value). Otherwise
            the value is sum_L (L/Lmax)^H n_L normalized to unit variance.

    Returns:
        {output: float32 (nt, ny, nx) or (ny, nx) when ``hours`` is None}.
    """
    rows = np.asarray(rows, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.float64)
    static = hours is None
    hrs = np.zeros(1) if static else np.asarray(hours, dtype=np.float64)
    scales = sorted(int(s) for s in scales)
    lmax = float(scales[-1])
    amps = {L: (L / lmax) ** hurst for L in scales}
    dims = 2 if static else 3
    need_d = any(o != "value" for o in outputs)
    sd_val = np.sqrt(sum(a * a for a in amps.values()) * _mean_sq(False) ** dims)
    sd_der = np.sqrt(
        sum(a * a for a in amps.values()) * _mean_sq(True) * _mean_sq(False) ** (dims - 1)
    )
    result = {o: np.zeros((len(hrs), len(rows), len(cols)), dtype=np.float32) for o in outputs}
    for octave, L in enumerate(scales):
        key = _key(seed, stream, octave, L)
        off_r, off_c, off_t = (hashed_uniform(key, n) for n in (1, 2, 3))
        tau_l = tau * (L / 8.0) ** (2.0 / 3.0)
        for it, t in enumerate(hrs):
            ar = _Axis((rows - advect[0] * t) / L + off_r, derivative=need_d)
            ac = _Axis((cols - advect[1] * t) / L + off_c, derivative=need_d)
            ir, ic = ar.nodes[:, None], ac.nodes[None, :]
            if static:
                lattice = hashed_gaussian(key, ir, ic)
            else:
                s = np.array([t / tau_l + off_t])
                at = _Axis(s)
                knots = at.nodes  # k-1 .. k+2
                lattice = at.w[0][0] * hashed_gaussian(key, np.array(knots[0]), ir, ic)
                for q in range(1, 4):
                    lattice = lattice + at.w[q][0] * hashed_gaussian(
                        key, np.array(knots[q]), ir, ic
                    )
            a = np.float32(amps[L])
            along_c = _interp_cols(lattice, ac, ac.w)
            if "value" in outputs:
                scale = a * np.float32(L / sd_der if streamfunction else 1.0 / sd_val)
                result["value"][it] += scale * _interp_rows(along_c, ar, ar.w)
            if "d_row" in outputs:
                result["d_row"][it] += (a / np.float32(sd_der)) * _interp_rows(along_c, ar, ar.dw)
            if "d_col" in outputs:
                d_c = _interp_cols(lattice, ac, ac.dw)
                result["d_col"][it] += (a / np.float32(sd_der)) * _interp_rows(d_c, ar, ar.w)
    if static:
        result = {o: v[0] for o, v in result.items()}
    return result
