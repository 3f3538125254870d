"""The equality every backend is held to (SPEC §6), shared by the backend tests."""

from __future__ import annotations

import numpy as np


def assert_same(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    """Outputs by name agree: |Δ| <= 1e-5 on real values, spikes (0/1 values) exact."""
    assert got.keys() == want.keys()
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape, name
        assert actual.dtype == expected.dtype, name
        if expected.size == 0:
            continue
        if expected.dtype.kind == "f" and np.isin(expected, (0.0, 1.0)).all():
            np.testing.assert_array_equal(actual, expected, err_msg=name)
        else:
            np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5, err_msg=name)
