import math

import pytest

from sslcli.schedules import warmup_cosine


def test_warmup_then_cosine_shape():
    s = warmup_cosine(1.0, total_steps=110, warmup_steps=10, final=0.1)
    assert len(s) == 110
    assert s[0] == pytest.approx(0.1)  # first warm-up step is already 1/10 of the way
    assert s[9] == pytest.approx(1.0)  # warm-up ends at the peak
    assert s[10] == pytest.approx(1.0)  # cosine starts at the peak
    assert s[-1] == pytest.approx(0.1)  # and ends at the final value
    assert s[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert all(s[i] >= s[i + 1] for i in range(10, 109))


def test_no_warmup_and_single_step():
    assert warmup_cosine(0.5, 1)[0] == pytest.approx(0.5)
    s = warmup_cosine(0.5, 5, warmup_steps=0)
    assert s[0] == pytest.approx(0.5) and s[-1] == pytest.approx(0.0)
