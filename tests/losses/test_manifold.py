import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import spawn_and_wait
from vitkd.losses.manifold import ManifoldLoss

ROOT_HALF = 1 / math.sqrt(2)


def _hand_case():
    """B=2 images, N=2 patches, D=2. Student: every token along e1 (scaled, to exercise the normalisation).
    Teacher: image 0 = [e1, e2], image 1 = [e1, u] with u = (1, 1) / sqrt(2)."""
    student = torch.tensor([[[3.0, 0.0], [0.5, 0.0]], [[2.0, 0.0], [7.0, 0.0]]])
    teacher = torch.tensor([[[4.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [5.0, 5.0]]])
    return student, teacher


def test_terms_hand_computed():
    # Student relations are all 1. Teacher off-diagonal relations (diagonals are 1 on both sides, error 0):
    # intra: image 0 e1.e2 = 0 -> 2 entries of error 1; image 1 e1.u = 1/sqrt2 -> 2 entries of (1 - 1/sqrt2)^2.
    #        a = (1 - 1/sqrt2)^2 = 1.5 - sqrt2; intra = (2 + 2a) / 8 = (5 - 2 sqrt2) / 8
    # inter: patch 0 [e1, e1] -> 0; patch 1 [e2, u] -> e2.u = 1/sqrt2 -> 2a; inter = 2a / 8 = (3 - 2 sqrt2) / 8
    # random (k = 4 = B * N: every token, order irrelevant for the mean): tokens [e1, e2, e1, u]; the 6 unordered
    #        off-diagonal pairs give errors 1 (e1.e2), 0 (e1.e1), a (e1.u), 1 (e2.e1), a (e2.u), a (e1.u)
    #        -> ordered sum 2 * (2 + 3a) = 13 - 6 sqrt2 over 16 entries
    a = (1 - ROOT_HALF) ** 2
    intra, inter, rand = (2 + 2 * a) / 8, 2 * a / 8, 2 * (2 + 3 * a) / 16
    assert intra == pytest.approx((5 - 2 * math.sqrt(2)) / 8) and rand == pytest.approx((13 - 6 * math.sqrt(2)) / 16)
    student, teacher = _hand_case()
    loss = ManifoldLoss(k=4)  # default weights 4, 0.1, 0.2
    total = loss([student], [teacher])
    assert loss.last_terms["intra"].item() == pytest.approx(4.0 * intra)
    assert loss.last_terms["inter"].item() == pytest.approx(0.1 * inter)
    assert loss.last_terms["random"].item() == pytest.approx(0.2 * rand)
    assert total.item() == pytest.approx(4.0 * intra + 0.1 * inter + 0.2 * rand)
    assert sorted(loss.last_random_indices[0].tolist()) == [0, 1, 2, 3]


def test_terms_average_over_layer_pairs():
    # pair 0: the hand case; pair 1: identical student and teacher -> all terms 0; the mean halves every term
    student, teacher = _hand_case()
    single = ManifoldLoss(k=4)
    single([student], [teacher])
    double = ManifoldLoss(k=4)
    double([student, teacher], [teacher, teacher])
    for name in ("intra", "inter", "random"):
        assert double.last_terms[name].item() == pytest.approx(single.last_terms[name].item() / 2)


def test_decoupled_terms_equal_blocks_of_the_brute_force_full_relation_map():
    B, N, K = 3, 5, 7
    gen = torch.Generator().manual_seed(0)
    students = [torch.randn(B, N, 4, generator=gen) for _ in range(2)]
    teachers = [torch.randn(B, N, 6, generator=gen) for _ in range(2)]
    loss = ManifoldLoss(k=K, w_intra=1.0, w_inter=1.0, w_rand=1.0)
    loss(students, teachers)

    expected = {"intra": 0.0, "inter": 0.0, "random": 0.0}
    for layer, (s, t) in enumerate(zip(students, teachers)):
        s_flat = F.normalize(s.reshape(B * N, -1), dim=-1)
        t_flat = F.normalize(t.reshape(B * N, -1), dim=-1)
        error = (t_flat @ t_flat.T - s_flat @ s_flat.T) ** 2  # full (B*N) x (B*N) map, token b*N + n
        image = torch.arange(B * N) // N
        patch = torch.arange(B * N) % N
        same_image = image[:, None] == image[None, :]  # the B diagonal N x N blocks
        same_patch = patch[:, None] == patch[None, :]  # the N strided B x B maps
        expected["intra"] += error[same_image].mean() / 2
        expected["inter"] += error[same_patch].mean() / 2
        idx = loss.last_random_indices[layer]
        assert idx.shape == (K,) and len(set(idx.tolist())) == K
        expected["random"] += error[idx][:, idx].mean() / 2
    for name, value in expected.items():
        assert loss.last_terms[name].item() == pytest.approx(value.item(), rel=1e-5), name


def test_k_larger_than_tokens_uses_all_tokens():
    loss = ManifoldLoss(k=192)
    loss([torch.randn(2, 4, 3)], [torch.randn(2, 4, 5)])
    assert sorted(loss.last_random_indices[0].tolist()) == list(range(8))


def test_gradients_reach_the_student_only():
    student = torch.randn(2, 9, 4, requires_grad=True)
    teacher = torch.randn(2, 9, 6, requires_grad=True)  # even if a caller forgets no_grad, the target is detached
    loss = ManifoldLoss(k=5)
    total = loss([student], [teacher])
    total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert list(loss.parameters()) == []
    assert all(not v.requires_grad for v in loss.last_terms.values())
    assert total.item() == pytest.approx(sum(v.item() for v in loss.last_terms.values()), rel=1e-6)


def test_sampling_reproducible_and_global_rng_untouched():
    features = [torch.randn(2, 16, 4)], [torch.randn(2, 16, 8)]
    state = torch.get_rng_state()
    a, b, c = ManifoldLoss(k=6, seed=1), ManifoldLoss(k=6, seed=1), ManifoldLoss(k=6, seed=2)
    assert a(*features).item() == b(*features).item()
    assert torch.equal(a.last_random_indices[0], b.last_random_indices[0])
    c(*features)
    assert not torch.equal(a.last_random_indices[0], c.last_random_indices[0])
    assert torch.equal(torch.get_rng_state(), state)
    b.load_state_dict(a.state_dict())
    a(*features)
    b(*features)
    assert torch.equal(a.last_random_indices[0], b.last_random_indices[0])


def test_gather_inter_without_process_group_is_a_no_op():
    features = [torch.randn(3, 4, 4)], [torch.randn(3, 4, 8)]
    plain, gathered = ManifoldLoss(k=4, seed=0), ManifoldLoss(k=4, seed=0, gather_inter=True)
    assert plain(*features).item() == gathered(*features).item()


def test_clear_errors_for_mismatched_inputs():
    loss = ManifoldLoss()
    with pytest.raises(ValueError, match="matching non-empty lists.*got 2 student and 1 teacher"):
        loss([torch.randn(2, 4, 3)] * 2, [torch.randn(2, 4, 3)])
    with pytest.raises(ValueError, match=r"layer pair 0.*\(2, 4, 3\).*\(2, 5, 3\).*align token grids"):
        loss([torch.randn(2, 4, 3)], [torch.randn(2, 5, 3)])
    with pytest.raises(ValueError, match="k must be positive"):
        ManifoldLoss(k=0)


def _gather_worker(rank: int, world_size: int, init_file: str, student: torch.Tensor, teacher: torch.Tensor,
                   results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        local = slice(rank * 2, rank * 2 + 2)
        s = student[local].clone().requires_grad_(True)
        loss = ManifoldLoss(k=4, w_intra=0.0, w_inter=1.0, w_rand=0.0, gather_inter=True)
        loss([s], [teacher[local]]).backward()
        results[rank] = (loss.last_terms["inter"].item(), s.grad.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_gather_inter_matches_the_global_batch_across_two_processes(tmp_path):
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, 5, generator=gen), torch.randn(4, 3, 7, generator=gen)
    # the reference: one process seeing the whole batch of 4 images
    whole = student.clone().requires_grad_(True)
    reference = ManifoldLoss(k=4, w_intra=0.0, w_inter=1.0, w_rand=0.0)
    reference([whole], [teacher]).backward()

    results = mp.Manager().dict()
    spawn_and_wait(_gather_worker, (2, str(tmp_path / "init"), student, teacher, results))
    # each process: its 2 rows of the 4 x 4 map per patch; the mean over processes is the global term
    inter = [results[r][0] for r in range(2)]
    assert sum(inter) / 2 == pytest.approx(reference.last_terms["inter"].item(), rel=1e-5)
    assert inter[0] != pytest.approx(inter[1])
    # the gather hands every process the gradient of all processes' losses w.r.t. its images; DDP then averages
    # over the 2 processes, so gradient / world_size must equal the global-batch gradient
    grads = torch.cat([results[r][1] for r in range(2)])
    assert torch.allclose(grads / 2, whole.grad, atol=1e-6)
