"""Score ensemble stores against a truth store, streaming over time chunks.

``score({"ldm": ens_ds, "regression": ens2_ds}, truth_ds, ScoreOptions(...))`` reads one
chunk of times at a time (the stores are opened lazily with dask; only the chunk is
loaded), computes every metric per time step, variable, method and region with the
numpy kernels of this package, and returns a CF-described ``xr.Dataset``:

- per time step, dims ``(forecast, variable, region, time)``: ``crps_fair``,
  ``crps_standard``, ``crps_skill``, ``crps_spread_fair``, ``crps_spread_standard``,
  ``ensmean_mse``, ``ensmean_mae``, ``ensmean_bias``, ``ens_variance``, ``ssim_ensmean``,
  ``n_valid``; with extra dims ``member_mse`` (member), ``quantile_error`` (quantile),
  and for precipitation variables ``twcrps_fair`` (threshold) and ``fss``
  (threshold, window);
- summaries, dims ``(forecast, variable, region, lead_time)``: ``summary_<name>`` for the
  time means, ``summary_ensmean_rmse``, ``summary_spread``, ``summary_spread_skill_ratio``
  (ratio of the time-mean parts, never a mean of ratios);
- ``rank_histogram`` (forecast, variable, region, rank) summed over times;
- zonal spectra ``spectrum_truth`` (variable, wavenumber), ``spectrum_ensmean`` and
  ``spectrum_members`` (forecast, variable, wavenumber), coordinate ``wavelength`` (km);
- densities ``density_truth`` (variable, bin), ``density`` (forecast, variable, bin),
  coordinate ``bin_center`` (variable, bin), and ``log_density_error``;
- display maps at one time, coarsened to at most ``map_size`` pixels a side:
  ``map_truth``, ``map_ensmean``, ``map_members`` (map_member = 0, 1).

Per-time values are spatial means over valid points (truth, every member and the
region's mask finite/true), cos(lat)-weighted on regular lat-lon grids; a time with no
valid point in a region gives NaN and ``n_valid`` 0. Time means weight every time step
equally. Units: scores carry the units of their variable (coordinate ``variable_units``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from kmscale.evaluation.base import MEMBER_DIM, spatial_dims
from kmscale.evaluation.baselines import KIND_ATTR
from kmscale.evaluation.precipitation import DEFAULT_WINDOWS
from kmscale.evaluation.quantiles import DEFAULT_QUANTILES
from kmscale.evaluation.score_fields import FieldSettings, score_field
from kmscale.evaluation.score_inputs import (  # noqa: F401 (public here: kmscale score's inputs)
    check_inputs,
    netcdf_engine,
    open_input,
    region_masks,
    shared_variables,
    units_match,
)
from kmscale.evaluation.score_result import ScoreAccumulator, ScoreLayout, density_edges
from kmscale.evaluation.sphere_scoring import is_healpix, score_healpix

PRECIP_UNITS = "mm h-1"


@dataclasses.dataclass
class ScoreOptions:
    """What ``score`` computes; every default of ``kmscale score`` lives here.

    Attributes:
        variables: variables to score (default: all that forecasts and truth share).
        masks: truth (or static) variables defining extra regions (value > 0.5 = in).
        time_chunk: time steps loaded at once (memory ~ time_chunk x M x H x W x 4 B).
        area_weighted: cos(lat) weights on regular lat-lon grids.
        quantiles: levels of the quantile errors (empty to skip).
        precip_thresholds: twCRPS and FSS thresholds, mm h-1, for precipitation variables.
        fss_windows: FSS neighbourhood widths, pixels (odd).
        ssim: compute the SSIM of the ensemble mean (Gaussian-window, mask-aware).
        spectra: compute zonal spectra (lines with NaN are left out).
        density_bins: bins of the density histograms (edges fixed from the first chunk).
        map_size: longest side, pixels, of the display maps stored for the report.
        map_time: index of the time step whose maps are stored.
        seed: seed of the random tie-breaking of the rank histogram.
    """

    variables: Sequence[str] | None = None
    masks: Sequence[str] = ()
    time_chunk: int = 1
    area_weighted: bool = True
    quantiles: Sequence[float] = DEFAULT_QUANTILES
    precip_thresholds: Sequence[float] = (0.1, 1.0, 5.0)
    fss_windows: Sequence[int] = DEFAULT_WINDOWS
    ssim: bool = True
    spectra: bool = True
    density_bins: int = 100
    map_size: int = 256
    map_time: int = 0
    seed: int = 0


@dataclasses.dataclass
class ChunkJob:
    """What scoring a chunk of times needs; sent once to each worker with a scheduler.

    Attributes:
        forecasts: the ensembles (lazy), by name.
        layout: what is scored (its truth lazy).
        grid: (y, x) all-true field carrying the grid's coordinates.
        regions: region name -> (y, x) boolean mask on ``grid``.
        settings: the per-field settings.
        edges: density bin edges per variable (from the truth's first chunk).
    """

    forecasts: Mapping[str, xr.Dataset]
    layout: ScoreLayout
    grid: xr.DataArray
    regions: dict[str, xr.DataArray]
    settings: FieldSettings
    edges: dict[str, np.ndarray]


def score(
    forecasts: Mapping[str, xr.Dataset],
    truth: xr.Dataset,
    opts: ScoreOptions | None = None,
    *,
    progress: bool = True,
    scheduler: str | None = None,
) -> xr.Dataset:
    """Score each forecast ensemble against the truth; see the module doc for the output.

    Forecasts whose attribute ``kmscale_forecast_kind`` is "baseline" (see
    :mod:`kmscale.evaluation.baselines`) are marked so in the ``forecast_kind`` coordinate.
    With ``scheduler`` (see :mod:`kmscale.data.distributed`) the time chunks are scored on
    dask.distributed workers and reduced here in time order: the result is the
    single-process one bit for bit.
    """
    from kmscale.data.distributed import connect, map_in_order

    opts = opts or ScoreOptions()
    if is_healpix(truth):  # equal-area cells + angular spectra: kmscale.evaluation.sphere_scoring
        return score_healpix(forecasts, truth, opts, score, progress=progress)
    job = chunk_job(forecasts, truth, opts)
    nt, step = job.layout.truth.sizes["time"], max(1, opts.time_chunk)
    chunks = [slice(s, min(s + step, nt)) for s in range(0, nt, step)]
    acc = ScoreAccumulator(job.layout, edges=job.edges)
    n_var = len(job.layout.variables)
    with (
        tqdm(total=nt * n_var, desc="scoring", unit="field", disable=not progress) as bar,
        connect(scheduler) as client,
    ):
        parts = (
            (score_chunk(job, sl) for sl in chunks)
            if client is None
            else map_in_order(client, score_chunk, job, chunks, name="score")
        )
        for sl, part in zip(chunks, parts, strict=True):
            acc.merge(part)
            bar.update((sl.stop - sl.start) * n_var)
    return acc.to_dataset()


def chunk_job(
    forecasts: Mapping[str, xr.Dataset], truth: xr.Dataset, opts: ScoreOptions
) -> ChunkJob:
    """Check the inputs and gather what scoring any chunk of times needs."""
    variables, truth, units = check_inputs(forecasts, truth, opts.variables)
    ydim, xdim = spatial_dims(truth[variables[0]], where="truth")
    names = list(forecasts)
    masks = region_masks(truth, forecasts, opts.masks, ydim, xdim)
    layout = ScoreLayout(
        forecasts=names,
        kinds=[forecasts[f].attrs.get(KIND_ATTR, "model") for f in names],
        sizes={f: int(forecasts[f].sizes[MEMBER_DIM]) for f in names},
        variables=variables,
        units=units,
        precip=[v for v in variables if units_match(units[v], PRECIP_UNITS)],
        regions=["all", *masks],
        truth=truth,
        ydim=ydim,
        xdim=xdim,
        opts=opts,
    )
    grid = truth[variables[0]].isel(time=0, drop=True).transpose(ydim, xdim)
    grid = grid.drop_vars([c for c in grid.coords if c not in (ydim, xdim, "lat", "lon")])
    grid = grid.copy(data=np.ones(grid.shape, bool))  # in memory: the grid's coordinates only
    first = slice(0, max(1, opts.time_chunk))
    return ChunkJob(
        forecasts=dict(forecasts),
        layout=layout,
        grid=grid,
        regions={"all": grid} | {k: grid.copy(data=m) for k, m in masks.items()},
        settings=FieldSettings(
            area_weighted=opts.area_weighted,
            ssim=opts.ssim,
            quantiles=opts.quantiles,
            precip_thresholds=opts.precip_thresholds,
            fss_windows=opts.fss_windows,
        ),
        edges={
            v: density_edges(_truth_chunk(layout, v, first), opts.density_bins) for v in variables
        },
    )


def score_chunk(job: ChunkJob, sl: slice) -> ScoreAccumulator:
    """Scores of the times ``sl``: every forecast, variable, region and time step."""
    L = job.layout
    acc = ScoreAccumulator(L, times=sl, edges=job.edges)
    for iv, v in enumerate(L.variables):
        y_chunk = _truth_chunk(L, v, sl)
        acc.add_truth(iv, y_chunk)
        for im, name in enumerate(L.forecasts):
            e_chunk = job.forecasts[name][v].isel(time=sl)
            e_chunk = np.asarray(e_chunk.transpose("time", MEMBER_DIM, L.ydim, L.xdim).values)
            acc.add_forecast(im, iv, e_chunk)
            for k in range(sl.stop - sl.start):
                it = sl.start + k
                fs = score_field(
                    xr.DataArray(
                        e_chunk[k], dims=(MEMBER_DIM, L.ydim, L.xdim), coords=job.grid.coords
                    ),
                    job.grid.copy(data=y_chunk[k]),
                    job.regions,
                    job.settings,
                    precip=v in L.precip,
                    seed=L.opts.seed + it,
                )
                acc.record(im, iv, it, fs, e_chunk[k], y_chunk[k])
    return acc


def _truth_chunk(layout: ScoreLayout, v: str, sl: slice) -> np.ndarray:
    """(T, H, W) truth of variable ``v`` at the times ``sl``, in memory."""
    y = layout.truth[v].isel(time=sl).transpose("time", layout.ydim, layout.xdim)
    return np.asarray(y.values)


def write_metrics(ds: xr.Dataset, path: str | Path) -> Path:
    """Write the metrics NetCDF atomically (temporary name, then rename)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    ds.to_netcdf(tmp, engine=netcdf_engine())
    os.replace(tmp, path)
    return path
