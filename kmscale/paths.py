"""Where kmscale finds the shared real-data folder.

One setting: the environment variable ``KMSCALE_DATA``. Without it, the folder
``../shared/data`` next to the project checkout (or next to the current directory)
is used. Code that needs the real files calls :func:`data_dir`; tests that need them
call :func:`data_dir` with ``required=False`` and skip when it returns ``None``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "KMSCALE_DATA"


def _candidates() -> list[Path]:
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env)]
    project_root = Path(__file__).resolve().parent.parent
    return [project_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def data_dir(required: bool = True) -> Path | None:
    """Return the real-data folder, or None (``required=False``) when it is absent."""
    for path in _candidates():
        if path.is_dir():
            return path
    if required:
        tried = ", ".join(str(p) for p in _candidates())
        raise FileNotFoundError(
            f"kmscale real-data folder not found: expected a directory at {tried}; "
            f"set {ENV_VAR} to the folder holding era5_uk_t2m_201903/, static/, ..."
        )
    return None


def data_file(*parts: str) -> Path:
    """Path of one file inside the real-data folder; raises if the folder or file is absent."""
    root = data_dir(required=True)
    path = root.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"expected the real-data file {path}, found nothing there")
    return path
