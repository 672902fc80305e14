"""redraft.checks: the API's numbers are refused, with their name, value and allowed range, before any work."""

from __future__ import annotations

import numpy as np
import pytest

from redraft.checks import finite, whole
from redraft.errors import InputError


def test_finite_accepts_real_numbers():
    assert finite("guidance_scale", 7.5, minimum=0) == 7.5
    assert finite("guidance_scale", 0, minimum=0) == 0.0
    assert finite("x", np.float32(2.5)) == 2.5
    assert finite("x", -3, maximum=1) == -3.0
    assert isinstance(finite("x", 3), float)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -0.5, True, "7.5", None])
def test_finite_refuses(bad):
    with pytest.raises(InputError, match=r"^guidance_scale is .*, but it must be a finite number of at least 0; "
                                         r"use e\.g\. 7\.5\.$"):
        finite("guidance_scale", bad, minimum=0, fix="use e.g. 7.5")


def test_finite_names_the_range_and_the_type():
    with pytest.raises(InputError, match=r"strength is 1.5, but it must be a finite number from 0 to 1\.$"):
        finite("strength", 1.5, minimum=0, maximum=1)
    with pytest.raises(InputError, match=r"x is '2' \(a str\), but it must be a finite number of at most 1\.$"):
        finite("x", "2", maximum=1)


def test_whole_accepts_whole_numbers():
    assert whole("steps", 50) == 50
    assert whole("steps", 4.0) == 4 and isinstance(whole("steps", 4.0), int)
    assert whole("steps", np.int64(3)) == 3
    assert whole("seed", 0, minimum=0) == 0


@pytest.mark.parametrize("bad", [True, False, 0, -1, 2.5, float("nan"), float("inf"), "50", None])
def test_whole_refuses(bad):
    with pytest.raises(InputError, match=r"^steps is .*, but it must be a whole number of at least 1; "
                                         r"e\.g\. 50 \(more is slower\)\.$"):
        whole("steps", bad, fix="e.g. 50 (more is slower)")


def test_whole_with_a_maximum():
    assert whole("steps", 1000, maximum=1000) == 1000
    with pytest.raises(InputError, match=r"steps is 1001, but it must be a whole number from 1 to 1000\."):
        whole("steps", 1001, maximum=1000)
    assert whole("offset", -5, minimum=None) == -5
