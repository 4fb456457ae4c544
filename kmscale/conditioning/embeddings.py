"""Lead-time and calendar features: the ``emb`` vector given to every U-Net.

For a forecast valid at time t with lead time L (hours) the embedding is::

    emb = [sin 2πh/24, cos 2πh/24, sin 2πd/365.25, cos 2πd/365.25, L / L_max]

where h is the UTC hour of day (fractional) and d the day of year (fractional). The
diurnal and seasonal terms are periodic so that 23Z and 00Z are neighbours; the lead
time is scaled by ``L_max`` (the longest lead the model is trained for) so that it is
O(1). The networks add a learned projection of ``emb`` to their timestep embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kmscale.errors import AlignmentError

#: Names of the embedding features, in order (the length is the U-Nets' ``emb_dim``).
EMBEDDING_FEATURES: tuple[str, ...] = ("hour_sin", "hour_cos", "doy_sin", "doy_cos", "lead_time")

#: Lead time (hours) that maps to 1.0; 10 days covers medium-range forecasts.
DEFAULT_MAX_LEAD_HOURS = 240.0

EMBEDDING_DIM = len(EMBEDDING_FEATURES)


def time_embedding(
    valid_time: Sequence | np.ndarray,
    lead_time_hours: Sequence[float] | np.ndarray | float | None = None,
    max_lead_hours: float = DEFAULT_MAX_LEAD_HOURS,
) -> np.ndarray:
    """Embedding vectors for valid times and lead times.

    Args:
        valid_time: (N,) datetime64 valid times (UTC).
        lead_time_hours: (N,) lead times in hours, a scalar for all, or None for
            analyses (lead 0).
        max_lead_hours: lead time mapped to 1.0.
    Returns:
        (N, EMBEDDING_DIM) float32 array.
    Raises:
        AlignmentError: lead times of another length than the valid times, negative,
            or not finite.
    """
    t = np.asarray(valid_time).astype("datetime64[s]")
    n = t.shape[0]
    if lead_time_hours is None:
        lead = np.zeros(n)
    else:
        lead = np.asarray(lead_time_hours, dtype=np.float64)
        if lead.ndim == 0:
            lead = np.full(n, float(lead))
    if lead.shape != (n,):
        raise AlignmentError(
            f"lead times: expected {n} values (one per valid time), found {lead.shape}"
        )
    if not np.all(np.isfinite(lead)) or np.any(lead < 0):
        raise AlignmentError(
            f"lead times: expected finite hours >= 0, found range [{lead.min()}, {lead.max()}]"
        )
    day = t.astype("datetime64[D]")
    hour = (t - day).astype(np.float64) / 3600.0
    year = t.astype("datetime64[Y]").astype("datetime64[D]")
    doy = (day - year).astype(np.float64) + hour / 24.0
    two_pi = 2.0 * np.pi
    feats = np.stack(
        [
            np.sin(two_pi * hour / 24.0),
            np.cos(two_pi * hour / 24.0),
            np.sin(two_pi * doy / 365.25),
            np.cos(two_pi * doy / 365.25),
            lead / float(max_lead_hours),
        ],
        axis=1,
    )
    return feats.astype(np.float32)


def lead_times_of(ds) -> np.ndarray | None:
    """Lead times (hours, float) of a predictor dataset, or None if it has none.

    Predictor datasets carry ``lead_time`` as a coordinate along ``time`` (hours, or
    timedelta64); analyses/reanalyses may omit it (lead 0).
    """
    if "lead_time" not in ds.coords and "lead_time" not in ds:
        return None
    lead = np.asarray(ds["lead_time"].values)
    if np.issubdtype(lead.dtype, np.timedelta64):
        lead = lead.astype("timedelta64[s]").astype(np.float64) / 3600.0
    lead = lead.astype(np.float64)
    if lead.ndim == 0:
        lead = np.full(ds.sizes["time"], float(lead))
    return lead
