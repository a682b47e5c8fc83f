"""benchmarks/demo_seeds.py: the seed summary (mean, std, paired gains) on hand-made numbers."""

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def demo_seeds():
    return load_benchmark("demo_seeds")


def test_paired_gains_mean_and_std(demo_seeds):
    top1 = {"vit_plain": {0: 90.0, 1: 92.0}, "deit_hard": {0: 94.0, 1: 91.0}}
    result = demo_seeds.summarize(top1, "vit_plain")
    plain, deit = result["rows"]["vit_plain"], result["rows"]["deit_hard"]
    assert plain["mean"] == pytest.approx(91.0) and plain["std"] == pytest.approx(2 ** 0.5)
    # gains by seed: +4 and -1
    assert deit["mean_gain"] == pytest.approx(1.5) and (deit["min_gain"], deit["max_gain"]) == (-1.0, 4.0)
    assert (deit["seeds_better"], deit["seeds"]) == (1, 2)
    report = demo_seeds.format_report(result, "vit_plain")
    assert "| deit_hard | 94.00 | 91.00 | 92.50 | 2.12 | +1.50 (-1.00 .. +4.00) | 1/2 |" in report
