"""RNG capture/restore: every generator the loop uses replays exactly, also through a weights_only checkpoint."""

import random

import numpy as np
import pytest
import torch

from vitkd.engine.checkpoint import load_checkpoint, save_checkpoint
from vitkd.engine.rng import capture_rng_state, restore_rng_state, seed_everything


def draws() -> tuple:
    """Draws from every RNG the state covers; `gauss`/`randn` also exercise the cached-Gaussian slots."""
    return (
        [random.random() for _ in range(3)] + [random.gauss(0.0, 1.0)],
        np.random.rand(3).tolist() + [float(np.random.randn())],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


@pytest.fixture(autouse=True)
def keep_global_rng_state():
    """These tests reseed the process-wide generators; leave them as they were for the tests that follow."""
    state = capture_rng_state()
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    restore_rng_state(state)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def test_restore_replays_the_draws_made_after_capture():
    seed_everything(123)
    draws()  # move every generator away from its freshly seeded state
    state = capture_rng_state()
    first = draws()
    assert draws() != first  # the generators moved on: replaying below is not a coincidence
    restore_rng_state(state)
    assert draws() == first


def test_restore_replays_a_pending_cached_gaussian():
    # Python's gauss() and numpy's legacy randn() produce Gaussians in pairs and cache the second one; a capture
    # taken between the two must carry that cached value, or the first draw after restore differs.
    seed_everything(7)
    random.gauss(0.0, 1.0)
    np.random.randn()
    state = capture_rng_state()
    assert state["numpy"]["has_gauss"] == 1
    expected = (random.gauss(0.0, 1.0), float(np.random.randn()))
    seed_everything(8)
    restore_rng_state(state)
    assert (random.gauss(0.0, 1.0), float(np.random.randn())) == expected


def test_seed_everything_gives_the_same_draws_for_the_same_seed_only():
    seed_everything(42)
    first = draws()
    seed_everything(42)
    assert draws() == first
    seed_everything(43)
    other = draws()
    assert all(a != b for a, b in zip(other, first))  # each of the three generators follows the seed


def test_seed_everything_matches_the_libraries_own_seeding():
    seed_everything(5)
    got = draws()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    assert draws() == got


def test_seed_everything_sets_cudnn_flags_only_when_deterministic():
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    seed_everything(0, deterministic=False)
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)
    seed_everything(0)
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, True)


def test_state_holds_only_tensors_and_plain_values():
    state = capture_rng_state()
    assert isinstance(state["python"], list) and all(isinstance(v, (int, float)) or v is None for v in state["python"])
    assert len(state["python"]) == 625 + 2  # MT19937: 624 words + position, then version and cached gauss
    assert state["numpy"]["keys"].dtype == torch.int64 and state["numpy"]["keys"].shape == (624,)
    assert isinstance(state["torch"], torch.Tensor) and state["torch"].dtype == torch.uint8


def test_state_survives_a_weights_only_checkpoint_round_trip(tmp_path):
    seed_everything(2024)
    random.gauss(0.0, 1.0)  # leave a cached Gaussian pending in Python's generator too
    save_checkpoint(tmp_path / "last.pt", {"epoch": 3, "rng": capture_rng_state()})
    expected = draws()
    seed_everything(0)
    loaded = load_checkpoint(tmp_path / "last.pt")  # torch.load(weights_only=True)
    assert loaded["epoch"] == 3
    restore_rng_state(loaded["rng"])
    assert draws() == expected
    # and the same with a bare torch.save / torch.load(weights_only=True)
    seed_everything(99)
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    expected = draws()
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generators_are_captured_and_restored():
    seed_everything(1)
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(4, device="cuda").tolist()
    restore_rng_state(state)
    assert torch.rand(4, device="cuda").tolist() == expected
