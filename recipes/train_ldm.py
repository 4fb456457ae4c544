"""Train the EDM residual (latent) diffusion model on top of a regression bundle.

    accelerate launch recipes/train_ldm.py --config recipes/configs/ldm.yaml
    accelerate launch --num_processes 2 --cpu recipes/train_ldm.py ... train.total_samples=20000
    accelerate launch --multi_gpu --num_processes 8 recipes/train_ldm.py ...   # one node, 8 GPUs
    accelerate launch --num_machines 2 --machine_rank R --main_process_ip H --num_processes 16 \\
        recipes/train_ldm.py ...                                                 # two nodes

Stage 2 of residual latent diffusion: ``regression_bundle`` (from
``recipes/train_regression.py``) gives the autoencoder, the regression U-Net and the
conditioning; this recipe computes the regression mean for every training time,
trains the EDM denoiser on the scaled residual, scores a small ensemble on the
validation period (fair CRPS, spread-skill, power at the smallest scales), keeps the
best checkpoint, and writes the complete bundle to ``<out_dir>/bundle`` for
``kmscale sample``. With ``decoder_refinement.total_samples`` > 0 it then fine-tunes the
autoencoder's decoder (encoder frozen) on latents the diffusion model generates for
training times, so that decoded members keep the smallest scales' power; the bundle
gets the refined autoencoder (run under ``<out_dir>/decoder_refinement``). EMA weights
are saved and restored with the Accelerate state; re-running the same command resumes
from the latest checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from kmscale.diffusion.train import LDMConfig, bundle_recipe, train_ldm

    return bundle_recipe(LDMConfig, train_ldm, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
