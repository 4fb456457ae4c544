"""Density comparison: histograms of forecast and truth values on shared bins.

The log-density plot (log10 of the probability density against the value) is how
extremes of generated fields are judged by eye: a model that cannot produce heavy rain
or the hottest afternoons shows its density dropping off before the truth's does.
Histograms are accumulated as counts so that they stream over time chunks (``add``) and
are normalised to densities at the end; values outside the bins are counted separately
(``below``/``above``) and reported, never silently dropped from the normalisation.

The summary number is the mean absolute log10 density ratio over bins where both
densities are positive, weighted by the truth's mass (``log_density_error``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr


@dataclasses.dataclass
class DensityHistogram:
    """Streaming histogram on fixed ``edges`` (units of x).

    Attributes:
        edges: (n_bins + 1,) increasing bin edges.
    """

    edges: np.ndarray
    counts: np.ndarray = dataclasses.field(init=False)
    below: int = 0
    above: int = 0

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=float)
        if self.edges.ndim != 1 or self.edges.size < 2 or np.any(np.diff(self.edges) <= 0):
            raise ValueError(
                f"density: expected increasing 1-D bin edges, found {self.edges[:5]}..."
            )
        self.counts = np.zeros(self.edges.size - 1, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        """Count the finite ``values`` (any shape)."""
        v = np.asarray(values).ravel()
        finite = np.isfinite(v)
        if not finite.all():  # copy only when there is something to drop (GBs on km grids)
            v = v[finite]
        self.below += int((v < self.edges[0]).sum())
        self.above += int((v > self.edges[-1]).sum())
        self.counts += np.histogram(v, bins=self.edges)[0]

    def merge(self, other: DensityHistogram) -> None:
        """Add the counts of ``other`` (same edges), e.g. a histogram of other time chunks."""
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("density: expected histograms on the same bin edges, found others")
        self.counts += other.counts
        self.below += other.below
        self.above += other.above

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.below + self.above

    def density(self) -> np.ndarray:
        """Probability density per bin (1 / units of x); integrates to the in-range share."""
        total = self.total
        if total == 0:
            return np.full(self.counts.shape, np.nan)
        return self.counts / (total * np.diff(self.edges))

    def to_dataarray(self, name: str = "density") -> xr.DataArray:
        centers = 0.5 * (self.edges[1:] + self.edges[:-1])
        return xr.DataArray(
            self.density(),
            dims=("bin",),
            coords={"bin_center": ("bin", centers)},
            name=name,
            attrs={"below_range": self.below, "above_range": self.above},
        )


def shared_edges(*samples: np.ndarray, n_bins: int = 100, margin: float = 0.25) -> np.ndarray:
    """Bin edges spanning the finite values of all samples, widened by ``margin`` of the range.

    Scoring fixes the edges from the first time chunk so later chunks share them.
    """
    finite = [np.asarray(s)[np.isfinite(s)] for s in samples]
    finite = [f for f in finite if f.size]
    if not finite:
        return np.linspace(0.0, 1.0, n_bins + 1)
    lo = min(float(f.min()) for f in finite)
    hi = max(float(f.max()) for f in finite)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return np.linspace(lo - margin * span, hi + margin * span, n_bins + 1)


def log_density_error(
    forecast_density: np.ndarray, truth_density: np.ndarray, widths: np.ndarray
) -> float:
    """Truth-mass-weighted mean |log10 p_f - log10 p_t| over bins where both are > 0.

    NaN when no bin has both densities positive.
    """
    pf, pt = np.asarray(forecast_density), np.asarray(truth_density)
    both = (pf > 0) & (pt > 0)
    if not both.any():
        return float("nan")
    w = pt[both] * np.asarray(widths)[both]
    return float((np.abs(np.log10(pf[both]) - np.log10(pt[both])) * w).sum() / w.sum())


def density_comparison(
    forecast: xr.DataArray, truth: xr.DataArray, *, n_bins: int = 100
) -> xr.Dataset:
    """Densities of forecast (members pooled) and truth on shared bins, and their error.

    Returns a Dataset with ``density_forecast`` and ``density_truth`` over ``bin``
    (coordinate ``bin_center``, units of x) and the scalar ``log_density_error``.
    """
    f, t = np.asarray(forecast.values), np.asarray(truth.values)
    edges = shared_edges(f, t, n_bins=n_bins)
    hf, ht = DensityHistogram(edges), DensityHistogram(edges)
    hf.add(f)
    ht.add(t)
    out = xr.Dataset({"density_forecast": hf.to_dataarray(), "density_truth": ht.to_dataarray()})
    out["log_density_error"] = log_density_error(hf.density(), ht.density(), np.diff(edges))
    return out
