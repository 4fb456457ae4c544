"""Probe (not a recipe stage yet): refine a latent-diffusion bundle's decoder on its own generated latents.

The decoder of the bundle's autoencoder is fine-tuned (encoder frozen) with Charbonnier +
the batch-mean windowed spectrum term on true training latents, plus the spectrum term
alone on latents the diffusion model generates for the same training times (the
spectrum needs no pairing with a truth). Writes <out>/autoencoder; score it by decoding
the same validation latents with the old and the new decoder. Session 5 (BENCHMARKS.md):

    python benchmarks/decoder_refinement_probe.py <bundle> 4000 1.0 <out> 4

Usage: decoder_refinement_probe.py BUNDLE STEPS SPECTRAL_WEIGHT OUT [GENERATED_MEMBERS]
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import downscaling_era5_uk as B  # noqa: E402

from kmscale.autoencoders.losses import charbonnier, mean_log_power_distance
from kmscale.bundle import ModelBundle
from kmscale.conditioning.dataset import encode_targets
from kmscale.data.datasets import era5_uk_predictors, era5_uk_static, era5_uk_t2m
from kmscale.diffusion import residual
from kmscale.diffusion.ensemble import sample_ensemble
from kmscale.diffusion.pipeline import DownscalingPipeline
from kmscale.diffusion.regression import predict_mean
from kmscale.diffusion.train import TrainingData


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bundle, steps, w, out = Path(argv[0]), int(argv[1]), float(argv[2]), Path(argv[3])
    gen_members = int(argv[4]) if len(argv) > 4 else 2
    target = era5_uk_t2m().load()
    data = TrainingData(target, era5_uk_predictors(target).load(), era5_uk_static(target).load())
    pipe = DownscalingPipeline(ModelBundle.load(bundle))
    ae = pipe.autoencoder
    t_tr, p_tr = data.period(B.TRAIN)
    t_tr, p_tr = t_tr.isel(time=slice(0, None, 2)), p_tr.isel(time=slice(0, None, 2))
    x = ae.normalize_input(torch.from_numpy(np.asarray(t_tr["t2m"].values, np.float32))[:, None])
    z_true = encode_targets(ae, t_tr, progress=False)
    ds = pipe.conditioning(p_tr)
    zm = predict_mean(pipe.regression, ds, progress=False)
    scale = torch.tensor(pipe.bundle.edm.residual_scale).reshape(-1, 1, 1)
    t0 = time.time()
    zg = []
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            r = sample_ensemble(pipe.denoiser, torch.cat([zm[i], item["cond"]], 0), item["emb"], gen_members,
                                list(range(7 * i, 7 * i + gen_members)), {"num_steps": 6, "solver": "heun"},
                                batch_size=gen_members, latent_shape=tuple(zm[i].shape))
            zg.append(residual.compose(zm[i].expand_as(r), r, scale))
    zg = torch.stack(zg, 1)  # (G, T, C, h, w)
    print("generated", tuple(zg.shape), round(time.time() - t0), "s", flush=True)
    ae.train_decoder_only()
    ae.train()
    opt = torch.optim.Adam([p for p in ae.parameters() if p.requires_grad], lr=2e-4)
    for s in range(steps):
        idx = torch.randint(0, x.shape[0], (16,))
        g = torch.randint(0, gen_members, (16,))
        xh = ae.normalize_input(ae.decode(z_true[idx]))
        xg = ae.normalize_input(ae.decode(zg[g, idx]))
        loss = (charbonnier(xh - x[idx], 1e-3).mean() + w * mean_log_power_distance(xh, x[idx], 1e-6)
                + w * mean_log_power_distance(xg, x[idx], 1e-6))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s % 200 == 0:
            print(s, float(loss.detach()), round(time.time() - t0), "s", flush=True)
    ae.eval()
    out.mkdir(parents=True, exist_ok=True)
    ae.save_pretrained(out / "autoencoder")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
