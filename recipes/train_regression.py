"""Train the regression U-Net (stage 1 of residual latent diffusion downscaling).

    accelerate launch recipes/train_regression.py --config recipes/configs/regression.yaml
    accelerate launch --num_processes 2 --cpu recipes/train_regression.py ... \
        train.total_samples=20000
    python recipes/train_regression.py --dry-run data.targets=t.nc data.predictors=p.nc

The training length is counted in samples seen and the global batch is split over
processes, so 1 or N processes (or GPUs, or nodes: ``accelerate launch
--num_machines``) follow the same schedule. Writes ``<out_dir>/bundle`` (autoencoder
+ regression U-Net + conditioning spec), the input of ``recipes/train_ldm.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from kmscale.diffusion.train import RegressionConfig, bundle_recipe, train_regression

    return bundle_recipe(RegressionConfig, train_regression, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
