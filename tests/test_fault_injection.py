"""Fault injection (benchmarks/fault_injection.py): each CLI stage killed with SIGKILL at a
seeded random moment of its writing phase resumes to the uninterrupted artifact, bit for bit,
and never leaves a complete-looking wrong artifact. One trial per stage here; the benchmark
runs more."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import fault_injection  # noqa: E402


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return fault_injection.build_stages(tmp_path_factory.mktemp("fault_injection"))


@pytest.mark.slow
@pytest.mark.parametrize("name", fault_injection.STAGES)
def test_kill_and_resume_gives_the_uninterrupted_artifact(stages, name):
    result = fault_injection.run_stage(stages[name], trials=1, seed=0)
    assert result["failures"] == 0, result["messages"]
    assert result["identical"] == 1.0
