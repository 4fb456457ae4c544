"""Conformance kit: what every autoencoder (built-in or plugin) must satisfy.

Third-party test suites import it; one call checks a model::

    from kmscale.autoencoders.testing import ConformanceCase, check_autoencoder

    def test_my_encoder_conforms(tmp_path):
        case = ConformanceCase(
            name="my-encoder",                       # its entry-point / registry name
            factory=lambda: MyEncoder(variables=["tp", "tcw"]),
            sample=my_sample,                        # (batch, (H, W), torch.Generator) -> x
            roundtrip_tolerance={"tp": 0.05, "tcw": None},  # RMSE / std per variable
        )
        check_autoencoder(case, tmp_path)            # raises ConformanceError listing failures

or, for several models, ``@conformance_parametrize([case_a, case_b])`` on a test taking
``case``. The checks (each a function ``_check_<name>`` below, reported by name):

- ``discovery``: the name is in :func:`available` and resolves to the model's class.
- ``shapes``: encode (B, C, H, W) -> float32 (B, latent_channels, H/f, W/f); decode back.
- ``roundtrip``: per-variable RMSE / std of the truth <= the declared tolerance.
- ``save_load``: ``save_pretrained`` + :func:`load_autoencoder` give the same fingerprint,
  the same config and the same latents; the fingerprint is stable across calls.
- ``nan_mask``: NaN inputs give finite latents, and a decode with the mask puts NaN back
  exactly where it was (``tiled_decode(mask=...)``).
- ``tiling``: tiled encode/decode equal the whole-field ones within ``tile_tolerance``.
- ``batch_independence``: a field's latent does not depend on the rest of its batch.
- ``determinism``: encoding/decoding twice gives identical results.
- ``wrong_variables``: the wrong number of channels, or loading the checkpoint as another
  model, raises a :class:`kmscale.errors.KmscaleError` naming what was expected.

:func:`check_class` is the cheap part that needs no instance (the class overrides the
contract's abstract pieces); the registry runs it when it loads a plugin.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kmscale.autoencoders.base import Autoencoder
from kmscale.autoencoders.registration import ConformanceError, check_class
from kmscale.errors import KmscaleError

Sample = Callable[[int, tuple[int, ...], torch.Generator], torch.Tensor]


@dataclass
class ConformanceCase:
    """One autoencoder under test.

    Attributes:
        name: registry or entry-point name the model must be discoverable under.
        factory: builds the model (trained weights, or random ones with input stats set).
        sample: ``(batch, spatial_shape, generator) -> x`` physical fields (B, C, *spatial)
            typical of the model's data; None: :func:`default_sample` from its input stats.
        roundtrip_tolerance: variable -> largest RMSE / std(truth) allowed; None (for
            the variable or the whole mapping): the round trip is not checked (random
            weights, a companion the model does not reconstruct).
        spatial_shape: test field size (H, W) or (npix,), a multiple of the downsample factor.
        tile, overlap: tiling checked against the whole field (grid models only).
        tile_tolerance: largest |tiled - whole| allowed, in latent / physical units.
        batch_tolerance: largest difference between batched and single-field latents.
    """

    name: str
    factory: Callable[[], Autoencoder]
    sample: Sample | None = None
    roundtrip_tolerance: Mapping[str, float | None] | None = None
    spatial_shape: tuple[int, ...] = (32, 32)
    tile: int = 16
    overlap: int = 8
    tile_tolerance: float = 1e-4
    batch_tolerance: float = 1e-5
    skip: Sequence[str] = field(default_factory=tuple)  # check names not to run, with a reason

    def __str__(self) -> str:
        return self.name


@dataclass
class ConformanceReport:
    """Outcome per check: "ok", "skipped: ..." or the failure message."""

    name: str
    results: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> dict[str, str]:
        return {k: v for k, v in self.results.items() if v != "ok" and not v.startswith("skipped")}


# ---- helpers ------------------------------------------------------------------------
def default_sample(model: Autoencoder) -> Sample:
    """Random physical fields from the model's input statistics: precipitation-like
    (about half zeros, exponential amounts) for log1p/sqrt variables, Gaussian with the
    recorded mean/std for the others (standard normal without statistics)."""
    stats = model.config.input_stats or {}

    def sample(batch: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        chans = []
        for name in model.variables:
            st = stats.get(name, {"mean": 0.0, "std": 1.0, "transform": "none", "scale": 1.0})
            z = torch.randn((batch, *shape), generator=gen)
            if st.get("transform", "none") in ("log1p", "sqrt"):
                amount = -torch.log(torch.rand((batch, *shape), generator=gen)) * st.get(
                    "scale", 1.0
                )
                chans.append(torch.where(z > 0, amount, torch.zeros_like(amount)))
            else:
                chans.append(st["mean"] + st["std"] * z)
        return torch.stack(chans, dim=1)

    return sample


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    same_nan = torch.isnan(a) == torch.isnan(b)
    if not bool(same_nan.all()):
        return float("inf")
    ok = ~torch.isnan(a)
    return float((a[ok] - b[ok]).abs().max()) if bool(ok.any()) else 0.0


def _public_config(model: Autoencoder) -> dict:
    """The config as JSON would store it (tuples as lists), without diffusers' private keys."""
    cfg = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


# ---- the checks ---------------------------------------------------------------------
class _Run:
    def __init__(self, case: ConformanceCase, tmp: Path):
        self.case = case
        self.tmp = tmp
        self.model = case.factory().eval()
        self.sample = case.sample or default_sample(self.model)
        gen = torch.Generator().manual_seed(0)
        self.x = self.sample(3, tuple(case.spatial_shape), gen).float()

    def discovery(self) -> None:
        from kmscale.autoencoders.registry import available, get_autoencoder_class

        names = available()
        if self.case.name not in names:
            raise ConformanceError(
                f"expected {self.case.name!r} among the available autoencoders, found {names}"
            )
        cls = get_autoencoder_class(self.case.name)
        if cls is not type(self.model):
            raise ConformanceError(
                f"expected {self.case.name!r} to resolve to {type(self.model)}, found {cls}"
            )
        check_class(cls)

    def shapes(self) -> None:
        m, x = self.model, self.x
        z = m.encode(x)
        want = (x.shape[0], m.latent_channels, *m.latent_shape(x.shape[2:]))
        if tuple(z.shape) != want or z.dtype != torch.float32:
            raise ConformanceError(
                f"encode: expected float32 latents {want}, found {z.dtype} {tuple(z.shape)}"
            )
        y = m.decode(z)
        if tuple(y.shape) != tuple(x.shape) or y.dtype != torch.float32:
            raise ConformanceError(
                f"decode: expected float32 fields {tuple(x.shape)}, "
                f"found {y.dtype} {tuple(y.shape)}"
            )
        if not bool(torch.isfinite(z).all()):
            raise ConformanceError("encode: expected finite latents, found NaN/inf")

    def roundtrip(self) -> str | None:
        tol = self.case.roundtrip_tolerance
        if tol is None:
            return "skipped: no tolerance declared"
        y = self.model.decode(self.model.encode(self.x))
        bad = []
        for c, name in enumerate(self.model.variables):
            if tol.get(name) is None:
                continue
            t = self.x[:, c]
            rel = float(torch.sqrt(((y[:, c] - t) ** 2).mean()) / t.std().clamp_min(1e-12))
            if rel > tol[name]:
                bad.append(f"{name}: RMSE/std {rel:.4g} > {tol[name]:g}")
        if bad:
            raise ConformanceError(
                f"round trip: expected errors within the declared tolerance, found {bad}"
            )
        return None

    def save_load(self) -> None:
        from kmscale.autoencoders.registry import load_autoencoder

        m = self.model
        fp = m.fingerprint()
        if m.fingerprint() != fp:
            raise ConformanceError("fingerprint: expected the same value on every call, found two")
        m.save_pretrained(self.tmp / "saved")
        loaded = load_autoencoder(self.tmp / "saved", expect=self.case.name).eval()
        if loaded.fingerprint() != fp:
            raise ConformanceError(
                f"save/load: expected fingerprint {fp}, found {loaded.fingerprint()}"
            )
        a, b = _public_config(loaded), _public_config(m)
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ConformanceError(
                f"save/load: expected the same config after loading, found {diff} differ"
            )
        d = _max_diff(loaded.encode(self.x), m.encode(self.x))
        if d > 0:
            raise ConformanceError(
                f"save/load: expected identical latents, found differences up to {d:g}"
            )

    def nan_mask(self) -> str | None:
        from kmscale.autoencoders.tiling import tiled_decode, tiled_encode

        if self.model.spatial_dims != 2:
            return "skipped: grid models only"
        x = self.x[0].clone()
        h, w = x.shape[-2:]
        mask = torch.ones((h, w), dtype=torch.bool)
        mask[: h // 4, : w // 3] = False
        x[:, ~mask] = float("nan")
        z = tiled_encode(self.model, x)
        if not bool(torch.isfinite(z).all()):
            raise ConformanceError(
                "NaN mask: expected finite latents for a masked field, found NaN/inf"
            )
        y = tiled_decode(self.model, z, shape=(h, w), mask=mask.numpy())
        if not bool((torch.isnan(y) == (~mask).expand_as(y)).all()):
            raise ConformanceError(
                "NaN mask: expected NaN exactly where the mask is False after decoding"
            )
        return None

    def tiling(self) -> str | None:
        from kmscale.autoencoders.tiling import tiled_decode, tiled_encode

        if self.model.spatial_dims != 2:
            return "skipped: grid models only"
        c = self.case
        x = self.x[0]
        whole = self.model.encode(x[None])[0]
        tiled = tiled_encode(self.model, x, tile=c.tile, overlap=c.overlap)
        d = _max_diff(tiled, whole)
        if d > c.tile_tolerance:
            raise ConformanceError(
                f"tiling: expected tiled == whole encode within {c.tile_tolerance:g}, found {d:g}"
            )
        y_whole = self.model.decode(whole[None])[0]
        y_tiled = tiled_decode(self.model, whole, tile=c.tile, overlap=c.overlap)
        d = _max_diff(y_tiled, y_whole)
        if d > c.tile_tolerance:
            raise ConformanceError(
                f"tiling: expected tiled == whole decode within {c.tile_tolerance:g}, found {d:g}"
            )
        return None

    def batch_independence(self) -> None:
        z = self.model.encode(self.x)
        for i in range(len(self.x)):
            d = _max_diff(self.model.encode(self.x[i : i + 1])[0], z[i])
            if d > self.case.batch_tolerance:
                raise ConformanceError(
                    f"batch independence: expected field {i}'s latent not to depend on its batch, "
                    f"found differences up to {d:g}"
                )

    def determinism(self) -> None:
        m = self.model
        z1, z2 = m.encode(self.x), m.encode(self.x)
        y1, y2 = m.decode(z1), m.decode(z1)
        if _max_diff(z1, z2) > 0 or _max_diff(y1, y2) > 0:
            raise ConformanceError(
                "determinism: expected identical results from identical calls, found differences"
            )

    def wrong_variables(self) -> None:
        from kmscale.autoencoders.registry import load_autoencoder

        m = self.model
        wrong = torch.cat([self.x, self.x[:, :1]], dim=1)
        try:
            m.encode(wrong)
        except KmscaleError as err:
            if str(m.in_channels) not in str(err):
                raise ConformanceError(
                    f"wrong variables: expected the error to name {m.in_channels} channels, "
                    f"found {err}"
                ) from err
        else:
            raise ConformanceError(
                f"wrong variables: expected a KmscaleError for {wrong.shape[1]} channels, "
                "found none"
            )
        path = self.tmp / "saved_wrong"
        m.save_pretrained(path)
        try:
            load_autoencoder(path, expect=f"not-{self.case.name}")
        except KmscaleError:
            pass
        else:
            raise ConformanceError(
                "wrong variables: expected a KmscaleError loading the checkpoint as another model"
            )


CHECKS = (
    "discovery",
    "shapes",
    "roundtrip",
    "save_load",
    "nan_mask",
    "tiling",
    "batch_independence",
    "determinism",
    "wrong_variables",
)


@torch.no_grad()
def check_autoencoder(
    case: ConformanceCase, tmp_dir: str | Path | None = None, *, raise_on_failure: bool = True
) -> ConformanceReport:
    """Run every check of the kit on ``case`` (module docstring).

    Args:
        tmp_dir: where checkpoints are written (a temporary directory when None).
        raise_on_failure: raise ConformanceError listing every failed check.
    """
    report = ConformanceReport(case.name)
    with tempfile.TemporaryDirectory() as scratch:
        run = _Run(case, Path(tmp_dir) if tmp_dir is not None else Path(scratch))
        for name in CHECKS:
            if name in case.skip:
                report.results[name] = "skipped: by the case"
                continue
            try:
                note = getattr(run, name)()
                report.results[name] = note or "ok"
            except (
                ConformanceError,
                KmscaleError,
                AssertionError,
                ValueError,
                RuntimeError,
                TypeError,
                KeyError,
            ) as err:
                report.results[name] = f"{type(err).__name__}: {err}"
    if raise_on_failure and report.failures:
        lines = "\n".join(f"  {k}: {v}" for k, v in report.failures.items())
        raise ConformanceError(f"autoencoder {case.name!r} fails the conformance kit:\n{lines}")
    return report


def conformance_parametrize(cases: Sequence[ConformanceCase]):
    """``pytest.mark.parametrize("case", cases)`` with the names as ids."""
    import pytest

    return pytest.mark.parametrize("case", list(cases), ids=[c.name for c in cases])
