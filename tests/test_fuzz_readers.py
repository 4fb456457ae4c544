"""Fuzzed reader inputs: a typed kmscale error or the right numbers, never anything else.

The generator and the oracle are in ``tests/_fuzz_readers.py``; ``benchmarks/scale.py``
runs many more examples.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).parent))
from _fuzz_readers import cases, run_in_tempdir  # noqa: E402


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases())
def test_fuzzed_files_give_a_typed_error_or_the_right_numbers(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing NaN/inf into integers warns; reading is tested
        run_in_tempdir(case)
