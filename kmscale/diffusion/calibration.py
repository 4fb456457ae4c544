"""Spread calibration of an ensemble: fitted on validation times, applied unchanged on new ones.

A generative model trained on some days is over- or under-dispersive on others; the usual
remedy (e.g. Gneiting et al. 2005, "Calibrated probabilistic forecasting using ensemble
model output statistics") is a post-processing step fitted on held-out data. Here it is
the simplest one: a single factor α on the members' deviations from the ensemble mean,

    x'_m = x̄ + α (x_m − x̄),

which leaves the ensemble mean (hence its RMSE and MAE) unchanged and multiplies the
spread by α. α is fitted so that the spread-skill ratio on the validation times is 1,

    α = RMSE(x̄) / sqrt((M + 1)/M · mean_t,y,x var_m(x_m))          (Fortin et al. 2014, eq. 6)

and clipped to [``alpha_min``, ``alpha_max``] so that a degenerate validation block cannot
blow the ensemble up or collapse it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kmscale.errors import ConfigError


def spread_skill_ratio(ens: np.ndarray, truth: np.ndarray) -> float:
    """Fortin et al. (2014) spread-skill ratio: sqrt((M+1)/M · mean var_m) / RMSE(mean).

    Args:
        ens: (M, ...) members first, M >= 2; truth: (...) matching ``ens[0]``.
    """
    ens, truth = _check(ens, truth)
    m = ens.shape[0]
    spread = np.sqrt((m + 1) / m * ens.var(0, ddof=1).mean())
    return float(spread / np.sqrt(np.mean((ens.mean(0) - truth) ** 2)))


def _check(ens: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ens, truth = np.asarray(ens, np.float64), np.asarray(truth, np.float64)
    if ens.ndim < 1 or ens.shape[0] < 2 or ens.shape[1:] != truth.shape:
        raise ConfigError(
            "spread calibration: expected members-first ensemble (M >= 2, ...) and truth (...), "
            f"found {ens.shape} and {truth.shape}"
        )
    if not (np.isfinite(ens).all() and np.isfinite(truth).all()):
        raise ConfigError(
            "spread calibration: expected finite ensemble and truth, found NaN or inf"
        )
    return ens, truth


@dataclass
class SpreadCalibration:
    """x'_m = x̄ + α (x_m − x̄) (module docstring); α = 1 is the identity."""

    alpha: float = 1.0
    alpha_min: float = 0.5  # clip of the fitted α
    alpha_max: float = 3.0

    @classmethod
    def fit(
        cls, ens: np.ndarray, truth: np.ndarray, alpha_min: float = 0.5, alpha_max: float = 3.0
    ) -> SpreadCalibration:
        """α making the spread-skill ratio of ``ens`` against ``truth`` 1, clipped.

        Args:
            ens: (M, ...) validation ensemble (members first), any units; truth: (...).
        """
        if not 0 < alpha_min <= 1 <= alpha_max:
            raise ConfigError(
                f"spread calibration: expected 0 < alpha_min <= 1 <= alpha_max, found "
                f"{alpha_min} and {alpha_max}"
            )
        ratio = spread_skill_ratio(ens, truth)
        alpha = 1.0 / ratio if ratio > 0 else alpha_max
        return cls(float(np.clip(alpha, alpha_min, alpha_max)), alpha_min, alpha_max)

    def apply(self, ens: np.ndarray) -> np.ndarray:
        """The calibrated ensemble, same shape and dtype as ``ens`` (M, ...)."""
        mean = ens.mean(0, keepdims=True)
        return (mean + self.alpha * (ens - mean)).astype(ens.dtype, copy=False)
