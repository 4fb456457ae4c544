"""Train a convolutional VAE (AutoencoderKL) for one variable group, in two stages.

    accelerate launch recipes/train_autoencoder.py --config recipes/configs/autoencoder_t2m.yaml
    accelerate launch --num_processes 2 recipes/train_autoencoder.py --config ... \
        stage1.total_samples=40000
    python recipes/train_autoencoder.py --config recipes/configs/autoencoder_t2m.yaml --dry-run

Stage 1 trains on small random patches, stage 2 fine-tunes on large patches; both use
the shared Trainer (EMA, mixed precision where supported, checkpoint every N samples,
resume by running the same command again, validation RMSE on held-out times). The
result is ``<out_dir>/autoencoder`` (``kmscale encode --autoencoder <out_dir>/autoencoder``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kmscale.config import parse_recipe_config, save_config


def main(argv: Sequence[str] | None = None) -> int:
    from kmscale.autoencoders.train import AutoencoderConfig, train_autoencoder

    cfg = parse_recipe_config(AutoencoderConfig, __doc__, argv)
    if cfg is None:  # --dry-run
        return 0
    save_config(cfg, f"{cfg.out_dir}/config.yaml")
    model = train_autoencoder(cfg)
    print(
        f"autoencoder ({model.downsample_factor}x down, {model.latent_channels} latent channels, "
        f"fingerprint {model.fingerprint()}) written to {cfg.out_dir}/autoencoder"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
