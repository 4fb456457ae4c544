"""The built-in demo dataset (kmscale.data.demo): determinism, consistency, plausibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kmscale.data.demo import (
    BLOCK,
    PREDICTOR_VARIABLES,
    TARGET_VARIABLES,
    DemoRegion,
    demo_predictors,
    demo_static,
    demo_targets,
    demo_times,
    lead_error_factor,
)
from kmscale.errors import ConfigError, GridError

T0 = pd.Timestamp("2023-07-01T00")
TIMES = pd.date_range(T0, periods=3, freq="h")


@pytest.fixture(scope="module")
def small():
    return demo_targets(DemoRegion.small(96, 96), TIMES, seed=3)


def test_region_grid_and_parsing():
    full = DemoRegion.full()
    assert full.shape == (4384, 6880)
    assert full.lat[0] == pytest.approx(15.005) and full.lon[-1] == pytest.approx(143.795)
    assert np.all(np.diff(full.lat) > 0) and np.all(np.diff(full.lon) > 0)
    assert DemoRegion.parse("30.5,100,64,32") == DemoRegion(1550, 2500, 64, 32)
    assert DemoRegion.parse("small") == DemoRegion.small()
    assert DemoRegion.small(4000, 3000) == DemoRegion(384, 3880, 4000, 3000)  # shifted to fit
    sub = full.sub(slice(10, 20), slice(5, 9))
    assert sub == DemoRegion(10, 5, 10, 4)
    with pytest.raises(GridError, match="inside the 4384 x 6880"):
        DemoRegion(4380, 0, 10, 10)
    with pytest.raises(ConfigError, match="LAT0,LON0,NY,NX"):
        DemoRegion.parse("30,100,64")
    assert len(demo_times("2023-07-01T00/2023-07-02T23")) == 48
    with pytest.raises(ConfigError, match="START/END"):
        demo_times("2023-07-01")


def test_deterministic_from_seed(small):
    again = demo_targets(DemoRegion.small(96, 96), TIMES, seed=3)
    other = demo_targets(DemoRegion.small(96, 96), TIMES, seed=4)
    for name in TARGET_VARIABLES:
        np.testing.assert_array_equal(small[name].values, again[name].values)
    assert not np.array_equal(small.t2m.values, other.t2m.values)
    # static fields do not depend on the weather seed
    np.testing.assert_array_equal(
        demo_static(DemoRegion.small(32, 32)).orography,
        demo_static(DemoRegion.small(32, 32)).orography,
    )


def test_subwindow_and_chunking_give_identical_values():
    region = DemoRegion(700, 4400, 150, 130)
    whole = demo_targets(region, TIMES[:2], seed=1)  # one numpy block
    lazy = demo_targets(region, TIMES[:2], seed=1, chunk=64)  # dask, 64 px chunks
    assert lazy.t2m.chunks is not None
    lazy = lazy.compute()
    sub = demo_targets(region.sub(slice(37, 101), slice(50, 82)), TIMES[1:2], seed=1)
    for name in TARGET_VARIABLES:
        np.testing.assert_array_equal(whole[name].values, lazy[name].values)
        np.testing.assert_array_equal(whole[name].values[1:2, 37:101, 50:82], sub[name].values)
    st_whole, st_sub = (
        demo_static(region, chunk=64).compute(),
        demo_static(region.sub(slice(5, 40), slice(90, 130))),
    )
    np.testing.assert_array_equal(st_whole.orography.values[5:40, 90:130], st_sub.orography.values)


def test_full_grid_is_lazy():
    ds = demo_targets(DemoRegion.full(), TIMES[:2])
    assert ds.t2m.shape == (2, 4384, 6880) and ds.t2m.dtype == np.float32
    assert max(ds.t2m.data.chunksize) <= 512 and ds.t2m.data.chunksize[0] == 1
    st = demo_static(DemoRegion.full())
    assert st.orography.data.npartitions > 1


def test_units_and_cf_attrs(small):
    expected = {"t2m": "K", "u10": "m s-1", "v10": "m s-1", "tp": "mm h-1"}
    for name, units in expected.items():
        assert small[name].attrs["units"] == units and small[name].attrs["standard_name"]
        assert small[name].dims == ("time", "lat", "lon") and small[name].dtype == np.float32
    assert (
        small.lat.attrs["units"] == "degrees_north" and small.lon.attrs["units"] == "degrees_east"
    )
    assert small.attrs["Conventions"].startswith("CF")


@pytest.mark.parametrize(
    "lat0,lon0",
    [(22.2, 119.7), (30.0, 90.0), (40.0, 116.0), (18.0, 128.0), (45.0, 100.0)],
    ids=["taiwan", "tibet", "beijing", "pacific", "mongolia"],
)
def test_plausible_ranges(lat0, lon0):
    ds = demo_targets(
        DemoRegion.at(lat0, lon0, 64, 64), pd.date_range(T0, periods=2, freq="6h"), seed=0
    )
    assert 230 < float(ds.t2m.min()) and float(ds.t2m.max()) < 320
    speed = np.hypot(ds.u10, ds.v10)
    assert float(speed.max()) < 40 and float(speed.mean()) > 0.3
    assert float(ds.tp.min()) >= 0 and float(ds.tp.max()) < 300
    for name in TARGET_VARIABLES:
        assert np.isfinite(ds[name].values).all()


def test_land_mask_is_real_and_orography_on_land():
    def land_at(lat, lon):
        return float(demo_static(DemoRegion.at(lat, lon, 1, 1)).land_sea_mask.item())

    assert land_at(39.9, 116.4) == 1.0  # Beijing
    assert land_at(31.2, 121.4) == 1.0  # Shanghai
    assert land_at(20.0, 130.0) == 0.0  # Philippine Sea
    assert land_at(38.0, 123.0) == 0.0  # Bohai / Yellow Sea
    assert land_at(23.7, 121.0) == 1.0  # Taiwan
    st = demo_static(DemoRegion.small(128, 128))
    oro, land = st.orography.values, st.land_sea_mask.values
    assert set(np.unique(land)) == {0.0, 1.0}
    assert (oro[land == 0] == 0).all() and oro.max() > 1000  # Taiwan's mountains
    tibet = demo_static(DemoRegion.at(32.0, 88.0, 64, 64)).orography
    assert 3000 < float(tibet.mean()) < 6500


def test_lapse_rate_and_diurnal_cycle():
    """Over steep terrain t2m falls with height at about 6.5 K/km; land has a larger daily range."""
    times = pd.date_range("2023-07-01T00", periods=24, freq="h")
    region = DemoRegion.at(28.0, 99.0, 64, 64)  # Hengduan mountains
    ds = demo_targets(region, times[::6], seed=0)
    h = demo_static(region).orography.values.ravel()
    t = ds.t2m.mean("time").values.ravel()
    design = np.stack(
        [h / 1000.0, np.ones_like(h), np.repeat(region.lat, region.nx) - region.lat.mean()], 1
    )
    slope = np.linalg.lstsq(design, t, rcond=None)[0][0]
    assert -8.5 < slope < -4.5, slope
    land = demo_targets(DemoRegion.at(35.0, 115.0, 8, 8), times, seed=0).t2m.mean(("lat", "lon"))
    sea = demo_targets(DemoRegion.at(20.0, 130.0, 8, 8), times, seed=0).t2m.mean(("lat", "lon"))
    assert float(land.max() - land.min()) > 3 * float(sea.max() - sea.min())


def _zonal_slope(x: np.ndarray, kmin: int, kmax: int) -> float:
    x = x - x.mean(axis=-1, keepdims=True)
    spec = (
        (np.abs(np.fft.rfft(x * np.hanning(x.shape[-1]), axis=-1)) ** 2)
        .reshape(-1, x.shape[-1] // 2 + 1)
        .mean(0)
    )
    k = np.arange(spec.size)
    sel = (k >= kmin) & (k <= kmax)
    return float(np.polyfit(np.log(k[sel]), np.log(spec[sel]), 1)[0])


def test_power_law_spectra():
    region = DemoRegion.at(20.0, 125.0, 128, 256)  # open sea: no terrain imprint
    ds = demo_targets(region, [T0], seed=0)
    # wavelengths 256/4 = 64 px down to 256/64 = 4 px
    t_slope = _zonal_slope(ds.t2m.values[0], 4, 64)
    u_slope = _zonal_slope(ds.u10.values[0], 4, 64)
    assert -3.6 < t_slope < -2.0, t_slope
    assert -2.8 < u_slope < -1.2, u_slope


def test_wet_fraction_and_heavy_tail():
    """Domain-wide wet fraction in 10-30 % (July), estimated from 100 scattered windows."""
    rng = np.random.default_rng(0)
    wet, rain = [], []
    for i in range(100):
        region = DemoRegion(int(rng.integers(0, 4368)), int(rng.integers(0, 6864)), 16, 16)
        tp = demo_targets(
            region, [T0 + pd.Timedelta(hours=int(rng.integers(0, 24)))], seed=i
        ).tp.values
        wet.append((tp > 0.1).mean())
        rain.append(tp[tp > 0.1])
    rain = np.concatenate(rain)
    assert 0.08 < np.mean(wet) < 0.35, np.mean(wet)
    assert 0.2 < np.mean(np.array(wet) > 0) < 0.8  # intermittent: many dry windows, many wet
    assert np.quantile(rain, 0.99) > 5 * np.median(rain)  # heavy tail


def test_smooth_in_time():
    ds = demo_targets(DemoRegion.small(64, 64), pd.date_range(T0, periods=13, freq="h"), seed=0)
    u = ds.u10.values
    hourly = np.abs(u[1] - u[0]).mean()
    half_day = np.abs(u[12] - u[0]).mean()
    assert hourly < 0.5 * half_day


def test_predictors_block_means_and_lead_error():
    region = DemoRegion.small(100, 75)
    times = pd.DatetimeIndex([T0] * 3)
    pred = demo_predictors(region, times, [0, 24, 240], seed=2)
    assert set(PREDICTOR_VARIABLES) <= set(pred.data_vars)
    assert list(pred.lead_time.values) == [0, 24, 240]
    assert np.allclose(np.diff(pred.lat), 0.25) and np.allclose(np.diff(pred.lon), 0.25)
    # cell centres enclose the target pixels with two cells to spare (bicubic interpolation)
    assert pred.lat[1] < region.lat[0] and pred.lat[-2] > region.lat[-1]
    assert pred.lon[1] < region.lon[0] and pred.lon[-2] > region.lon[-1]
    for name in PREDICTOR_VARIABLES:
        assert pred[name].attrs["units"] and np.isfinite(pred[name].values).all()
    assert 240 < float(pred.t850.mean()) < 310
    assert 4.5e4 < float(pred.z500.mean()) < 6.0e4
    assert 0 < float(pred.q850.min()) and float(pred.q850.max()) < 0.03
    assert 95000 < float(pred.msl.min()) and float(pred.msl.max()) < 106000
    # error against the block-mean truth grows with lead time (8 forecasts per lead)
    valid = pd.date_range(T0, periods=8, freq="7h")
    r0 = (region.row0 // BLOCK - 2) * BLOCK
    c0 = (region.col0 // BLOCK - 2) * BLOCK
    truth_region = DemoRegion(r0, c0, pred.sizes["lat"] * BLOCK, pred.sizes["lon"] * BLOCK)
    truth = demo_targets(truth_region, valid, seed=2).coarsen(lat=BLOCK, lon=BLOCK).mean()
    rmse = []
    for lead in (0, 24, 240):
        fc = demo_predictors(region, valid, lead, seed=2)
        rmse.append(float(np.sqrt(((fc.t2m.values - truth.t2m.values) ** 2).mean())))
    assert rmse[0] < rmse[1] < rmse[2], rmse
    assert lead_error_factor(0) == pytest.approx(0.15)
    with pytest.raises(ConfigError, match="lead_time_hours"):
        demo_predictors(region, times, [0, 1], seed=2)


def test_demo_data_cli_writes_cf_stores_and_resumes(tmp_path, capsys):
    import xarray as xr

    from kmscale.cli import main
    from kmscale.data.store import open_store

    args = [
        "demo-data",
        "--out",
        str(tmp_path),
        "--region",
        "30,100,40,60",
        "--times",
        "2023-07-01T00/2023-07-01T02",
        "--chunk",
        "32",
    ]
    assert main(args) == 0
    region = DemoRegion.parse("30,100,40,60")
    targets = open_store(tmp_path / "targets.zarr", kind="targets")
    ref = demo_targets(region, pd.date_range(T0, periods=3, freq="h"))
    for name in TARGET_VARIABLES:
        np.testing.assert_array_equal(targets[name].values, ref[name].values)
        assert targets[name].attrs["units"] == ref[name].attrs["units"]
    assert targets.t2m.encoding["chunks"] == (1, 32, 32)
    pred = open_store(tmp_path / "predictors.zarr", kind="predictors")
    assert (pred.lead_time.values == 24).all() and pred.q850.attrs["units"] == "kg kg-1"
    static = open_store(tmp_path / "static.zarr", kind="static")
    np.testing.assert_array_equal(static.orography.values, demo_static(region).orography.values)
    assert main(args) == 0  # complete stores of the same dataset are kept
    changed = args[:-4] + ["--times", "2023-07-01T00/2023-07-01T03"]
    assert main(changed) == 1
    assert "--overwrite" in capsys.readouterr().err
    nc = tmp_path / "nc"
    assert (
        main(
            [
                "demo-data",
                "--out",
                str(nc),
                "--region",
                "30,100,32,32",
                "--times",
                "2023-07-01T00/2023-07-01T00",
                "--format",
                "netcdf",
            ]
        )
        == 0
    )
    with xr.open_dataset(nc / "targets.nc", engine="netcdf4") as ds:
        assert ds.t2m.attrs["units"] == "K" and ds.sizes["time"] == 1


def test_stores_written_several_steps_per_write_equal_one_step_per_write(tmp_path, monkeypatch):
    """``write_zarr_store`` batches time steps into one region write when they are small;
    the store (values, zarr chunks of one step) is the same as one step per write, and an
    interrupted batched store resumes to the same values."""
    import xarray as xr

    from kmscale.data import demo_write
    from kmscale.data.store import StoreWriter, open_store

    ds = demo_targets(DemoRegion.small(16, 16), pd.date_range(T0, periods=5, freq="h"))
    per_step = 4 * 16 * 16
    stores = {}
    for name, values in (("one", per_step), ("batched", 2 * per_step)):
        monkeypatch.setattr(demo_write, "WRITE_VALUES", values)
        stores[name] = demo_write.write_zarr_store(
            ds, tmp_path / f"{name}.zarr", "targets", "f", 8, overwrite=False
        )
    one, batched = (open_store(stores[k], kind="targets") for k in ("one", "batched"))
    xr.testing.assert_identical(one.load(), batched.load())
    assert batched.t2m.encoding["chunks"] == (1, 8, 8)

    # interrupted after the first write of two steps: the rerun writes only the rest
    path = tmp_path / "resumed.zarr"
    writer = StoreWriter(path, ds.chunk({"time": 1}), kind="targets", fingerprint="f", dim="time",
                         chunk=2, encoding=demo_write._encoding(ds, 8))  # fmt: skip
    writer.write(0, ds.isel(time=slice(0, 2)))
    done = demo_write.write_zarr_store(ds, path, "targets", "f", 8, overwrite=False)
    xr.testing.assert_identical(open_store(done, kind="targets").load(), one.load())
