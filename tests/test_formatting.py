import math

import numpy as np
import pytest

from steerscope.formatting import ci, num


@pytest.mark.parametrize("x, fmt, expected", [
    (0.12345, ".3g", "0.123"),
    (0.12345, ".2f", "0.12"),
    (3, ".3f", "3.000"),
    (np.float64(1.5), ".2f", "1.50"),
    (np.float32(2.25), ".1f", "2.2"),
    (np.int64(7), "d", "7"),
    (None, ".3f", "n/a"),
    (math.nan, ".3g", "n/a"),
    (np.float64(np.inf), ".2f", "n/a"),
    (-math.inf, ".2f", "n/a"),
    (True, ".3f", "True"),
    ("text", ".3f", "text"),
])
def test_num(x, fmt, expected):
    assert num(x, fmt) == expected


def test_num_default_format():
    assert num(1234.5678) == "1.23e+03"


def test_ci():
    assert ci(0.5, 0.25, 0.75, ".2f") == "0.50 [0.25, 0.75]"
    assert ci(1.0, None, math.nan, ".3f") == "1.000 [n/a, n/a]"
    assert ci(None, None, None) == "n/a [n/a, n/a]"
    assert ci(0.12345, 0.1, 0.2) == "0.123 [0.1, 0.2]"
