"""Train a pseudo-precipitation encoder: TP + a continuous companion -> PP ~ N(0, 1).

    accelerate launch recipes/train_pseudo_precip.py --config recipes/configs/pseudo_precip.yaml
    python recipes/train_pseudo_precip.py --config recipes/configs/pseudo_precip_telangana.yaml
    python recipes/train_pseudo_precip.py --config ... model.name=my-plugin-encoder --dry-run

The encoder class is picked by its registry or entry-point name (``model.name``), so a
third-party encoder trains with the same recipe. Training uses the shared Trainer (EMA,
checkpoints every N samples, resume by running the same command again); the best
validation weights plus the PP normalization become ``<out_dir>/autoencoder``
(``kmscale encode --autoencoder <out_dir>/autoencoder``, or ``autoencoder:`` in the
regression/LDM configs), and ``<out_dir>/scores.json`` holds the held-out scores.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kmscale.config import parse_recipe_config, save_config


def main(argv: Sequence[str] | None = None) -> int:
    from kmscale.autoencoders.pseudo_precip_train import PseudoPrecipConfig, train_pseudo_precip

    cfg = parse_recipe_config(PseudoPrecipConfig, __doc__, argv)
    if cfg is None:  # --dry-run
        return 0
    save_config(cfg, f"{cfg.out_dir}/config.yaml")
    model, scores = train_pseudo_precip(cfg)
    print(
        f"pseudo-precipitation encoder {cfg.model.name!r} (fingerprint {model.fingerprint()}) "
        f"written to {cfg.out_dir}/autoencoder"
    )
    if scores is not None:
        print(
            f"validation: wet-fraction error {scores['wet_fraction_error']:.4f}, "
            f"RMSE/std {scores['rmse_rel']:.4f}, PP marginal {scores['marginal']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
