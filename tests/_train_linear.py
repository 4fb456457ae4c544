"""Helper script for test_training: trains the toy model under `accelerate launch`."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_training import _data, _export, _loss, _model, _settings  # noqa: E402

from kmscale.training import Trainer  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    Trainer(_model(), _loss, _data(), out, _settings(ema_decay=0.0), export_fn=_export).fit()
