"""Parallelism must not change the math: cp and dp splits of the same global batch give the same
losses as one rank for 20 steps (float32, CPU, gloo)."""
import pytest

from train_helpers import losses, run_world

STEPS = ["train.max_steps=20"]
WORLD2 = {
    "cp2_zigzag": ["parallel.cp=2", "parallel.layout=zigzag"],
    "cp2_contiguous": ["parallel.cp=2", "parallel.layout=contiguous"],
    "dp2": [],
    "dp2_engine_none": ["parallel.engine=none"],
}


def _close(a, b, rel=1e-5):
    assert len(a) == len(b) == 20
    for step, (x, y) in enumerate(zip(a, b), 1):
        assert abs(x - y) <= rel * abs(y), f"step {step}: {x} vs {y}"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    return losses(run_world(1, [(STEPS, str(tmp / "run"))], str(tmp / "store"))[0][0])


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("world2")
    runs = [(STEPS + o, str(tmp / name)) for name, o in WORLD2.items()]
    res = run_world(2, runs, str(tmp / "store"))
    return {name: (res[0][i], res[1][i]) for i, name in enumerate(WORLD2)}


@pytest.mark.parametrize("name", list(WORLD2))
def test_world2_matches_one_rank(single, world2, name):
    r0, r1 = world2[name]
    _close(losses(r0), single)
    assert losses(r0) == losses(r1)  # every rank reports the same global loss


def test_dp2_cp2_stripe_with_accumulation_matches(single, tmp_path):
    res = run_world(4, [(STEPS + ["parallel.cp=2", "optim.grad_accum=2", "parallel.layout=stripe"],
                         str(tmp_path / "run"))], str(tmp_path / "store"))
    _close(losses(res[0][0]), single)
