"""The `embedding` loss term (GPT4Image-style per-sample targets): the clip / contrastive / cosine formulas by hand,
targets mixed like the images under Mixup/CutMix, the global-batch gather across 2 processes, the term's checks, and
a short training run from a store that `embed-targets` built."""

import copy
import math

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import TINY_VIT_KWARGS, spawn_and_wait, tiny_recipe_dict
from vitkd.cache.embedding_job import embed_targets
from vitkd.cache.embedding_store import EmbeddingStoreWriter
from vitkd.config import load_recipe
from vitkd.data.mixup import MixPlan
from vitkd.errors import CacheMismatchError, ConfigError
from vitkd.losses.base import TapRequest, TermContext
from vitkd.losses.embedding import EmbeddingAlignmentLoss, alignment_loss, build_projection, mix_embeddings
from vitkd.losses.embedding_terms import EmbeddingTerm
from vitkd.losses.inputs import StudentOutputs, TeacherOutputs, Targets
from vitkd.losses.registry import resolve_loss_terms
from vitkd.tasks.classification.runners import forward_tapped
from vitkd.training import train

# The worked 2-sample case, tau = 0.5, unit rows s_0 = (1, 0), s_1 = (0, 1), t_0 = (1, 0), t_1 = (0.6, 0.8):
#   Z = S T^T / tau = [[1, 0.6], [0, 0.8]] / 0.5 = [[2, 1.2], [0, 1.6]]
#   student -> target rows:  -log softmax(Z_0)_0 = log(1 + e^(1.2 - 2)) = log(1 + e^-0.8)
#                            -log softmax(Z_1)_1 = log(1 + e^(0 - 1.6)) = log(1 + e^-1.6)
#   target -> student (Z^T = [[2, 0], [1.2, 1.6]]):  log(1 + e^-2), log(1 + e^(1.2 - 1.6)) = log(1 + e^-0.4)
#   contrastive = (log(1 + e^-0.8) + log(1 + e^-1.6)) / 2 = 0.2831...
#   clip = (contrastive + (log(1 + e^-2) + log(1 + e^-0.4)) / 2) / 2
#   cosine = ((1 - 1) + (1 - 0.8)) / 2 = 0.1
S = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
T = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
CONTRASTIVE = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))) / 2
BACKWARD = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-0.4))) / 2


def test_the_three_losses_by_hand():
    assert alignment_loss(S, T, "contrastive", 0.5).item() == pytest.approx(CONTRASTIVE, rel=1e-6)
    assert alignment_loss(S, T, "clip", 0.5).item() == pytest.approx((CONTRASTIVE + BACKWARD) / 2, rel=1e-6)
    assert alignment_loss(S, T, "cosine", 0.5).item() == pytest.approx(0.1, rel=1e-6)


def test_the_module_normalises_both_sides_through_its_projection():
    loss = EmbeddingAlignmentLoss(2, 2, projection="linear", loss="clip", tau=0.5)
    loss.projection = nn.Identity()  # the worked case: features are already the projected rows
    scaled_features, scaled_targets = S * torch.tensor([[3.0], [0.5]]), T * 7.0  # any norm
    assert loss(scaled_features, scaled_targets).item() == pytest.approx((CONTRASTIVE + BACKWARD) / 2, rel=1e-6)
    mlp = build_projection("mlp", 32, 128)
    assert [type(layer) for layer in mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].out_features) == (32, 32, 128)
    assert isinstance(build_projection("linear", 32, 128), nn.Linear)
    with pytest.raises(ValueError, match="loss: cosine has no negatives"):
        EmbeddingAlignmentLoss(2, 2, loss="cosine", gather=True)


def test_targets_are_mixed_with_the_images_pairs_and_weights():
    targets = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])  # unit: (1, 0), (0, 1), (0.6, 0.8)
    plan = MixPlan(partner=torch.tensor([1, 0, 2]), lam=torch.tensor([0.75, 0.5, 1.0]),
                   cutmix=torch.tensor([False, True, False]), boxes=torch.zeros(3, 4, dtype=torch.int64))
    unit = torch.nn.functional.normalize(targets, dim=-1)
    mixed = mix_embeddings(unit, plan)
    # row 0: 0.75 (1, 0) + 0.25 (0, 1) = (0.75, 0.25) -> / sqrt(0.625); row 1: (0.5, 0.5) -> (1, 1) / sqrt(2)
    expected = torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.6, 0.8]])
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(mixed, expected, atol=1e-6)
    assert torch.equal(mixed[2], unit[2])  # an unmixed sample keeps its own target
    loss = EmbeddingAlignmentLoss(2, 2, projection="linear", loss="contrastive", tau=0.1)
    loss.projection = nn.Identity()
    features = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    student = torch.nn.functional.normalize(features, dim=-1)
    assert loss(features, targets, plan).item() == pytest.approx(alignment_loss(student, expected, "contrastive",
                                                                                0.1).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# the global batch across 2 processes


def _make_loss(loss: str, gather: bool) -> EmbeddingAlignmentLoss:
    torch.manual_seed(0)  # every process starts from the same projection, as DDP's broadcast makes it
    return EmbeddingAlignmentLoss(5, 3, projection="mlp", loss=loss, tau=0.05, gather=gather)


def _gather_worker(rank: int, world_size: int, init_file: str, features: torch.Tensor, targets: torch.Tensor,
                   sizes: list, loss_name: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        local = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
        x = features[local].clone().requires_grad_(True)
        loss = _make_loss(loss_name, gather=True)
        value = loss(x, targets[local])
        value.backward()
        grads = [p.grad.clone() for p in loss.parameters()]
        for grad in grads:  # what DDP does with the parameters' gradients
            dist.all_reduce(grad)
            grad /= world_size
        results[rank] = (value.item(), x.grad.clone(), grads)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
@pytest.mark.parametrize("loss_name, sizes", [("clip", [3, 3]), ("contrastive", [2, 4])])
def test_gather_equals_the_single_process_loss_on_the_concatenated_batch(tmp_path, loss_name, sizes):
    gen = torch.Generator().manual_seed(1)
    features, targets = torch.randn(6, 5, generator=gen), torch.randn(6, 3, generator=gen)
    whole = features.clone().requires_grad_(True)
    reference = _make_loss(loss_name, gather=False)
    expected = reference(whole, targets)
    expected.backward()

    results = mp.Manager().dict()
    spawn_and_wait(_gather_worker, (2, str(tmp_path / "init"), features, targets, sizes, loss_name, results))
    # every process computes the same global-batch loss
    assert [results[r][0] for r in range(2)] == pytest.approx([expected.item()] * 2, rel=1e-6)
    # the gather sums both processes' gradients into each local row (2 x dL/dx); DDP's averaging halves it again
    grads = torch.cat([results[r][1] for r in range(2)])
    assert torch.allclose(grads / 2, whole.grad, atol=1e-6)
    # the projection's DDP-averaged gradients equal the single-process ones (uneven batches included)
    for rank in range(2):
        for got, want in zip(results[rank][2], [p.grad for p in reference.parameters()]):
            assert torch.allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# the term


def _student() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TINY_VIT_KWARGS)


def _toy_store(path, dim=6, num_samples=8, name="toy/train"):
    record = {"name": name, "num_samples": num_samples, "samples_hash": "a" * 64}
    with EmbeddingStoreWriter(path, num_samples=num_samples, dim=dim, dataset=record,
                              source={"kind": "import"}) as writer:
        writer.append(torch.randn(num_samples, dim, generator=torch.Generator().manual_seed(2)))
        writer.finish()
    return record


def _context(student, record):
    return TermContext(student=student, teacher=None, num_classes=10, img_size=16,
                       dataset_record=(lambda: record) if record else None)  # {}: the caller gives none


def test_the_head_drop_hook_fires_through_the_head():
    student = _student()
    logits, _, tapped = forward_tapped(student, torch.randn(2, 3, 16, 16), TapRequest(hooks=("head_drop",)))
    assert tapped.hooked["head_drop"].shape == (2, 32)  # the pooled, fc-normed class token: the pre-logits
    assert torch.allclose(student.head(tapped.hooked["head_drop"]), logits, atol=1e-6)


def test_term_reads_rows_by_sample_id_and_needs_no_teacher(tmp_path):
    record = _toy_store(tmp_path / "store")
    term = EmbeddingTerm(_context(_student(), record), store=str(tmp_path / "store"), tau=0.1)
    assert term.needs.student_hooks == ("head_drop",) and not term.needs.uses_teacher
    linear_in = term.loss.projection[0]
    assert (linear_in.in_features, term.loss.projection[2].out_features) == (32, 6)
    features = torch.randn(3, 32, requires_grad=True)
    ids = torch.tensor([5, 0, 7])
    value = term(StudentOutputs(logits=torch.zeros(3, 10), hooked={"head_drop": features}), TeacherOutputs(),
                 Targets(labels=torch.zeros(3, dtype=torch.long), sample_ids=ids))
    reference = term.loss(features, term.store.read(ids))
    assert value.item() == pytest.approx(reference.item())
    value.backward()
    assert features.grad is not None and all(p.grad is not None for p in term.parameters())
    with pytest.raises(ValueError, match="targets.sample_ids is None"):
        term(StudentOutputs(logits=torch.zeros(3, 10), hooked={"head_drop": features}), TeacherOutputs(),
             Targets(labels=torch.zeros(3, dtype=torch.long)))


def test_term_refuses_a_store_of_other_data_and_bad_parameters(tmp_path):
    _toy_store(tmp_path / "store")
    other = {"name": "toy/train", "num_samples": 8, "samples_hash": "f" * 64}
    with pytest.raises(CacheMismatchError, match=r"dataset.samples_hash: this run has \"f+\""):
        EmbeddingTerm(_context(_student(), other), store=str(tmp_path / "store"))
    with pytest.raises(ValueError, match="dataset_record"):
        EmbeddingTerm(_context(_student(), {}), store=str(tmp_path / "store"))
    record = _toy_store(tmp_path / "cnn_store")
    with pytest.raises(ValueError, match="no module named 'pool'"):
        EmbeddingTerm(_context(_student(), record), store=str(tmp_path / "cnn_store"), feature="pool")
    for params, message in [({}, r"losses.1.store: is required"), ({"store": 3}, "losses.1.store: got 3"),
                            ({"store": "s", "loss": "mse"}, "losses.1.loss: 'mse' is not valid; valid values: clip, "
                                                            "contrastive, cosine"),
                            ({"store": "s", "tau": 0}, r"losses.1.tau: expected a number > 0"),
                            ({"store": "s", "projection": "deep"}, "valid values: mlp, linear"),
                            ({"store": "s", "loss": "cosine", "gather": True}, "losses.1.gather"),
                            ({"store": "s", "alpha": 1}, "unknown parameter")]:
        with pytest.raises(ValueError, match=message):
            EmbeddingTerm.check_params(params, "losses.1")
    resolved = resolve_loss_terms(load_recipe(raw=tiny_recipe_dict(tmp_path, losses=[
        {"name": "ce"}, {"name": "embedding", "store": "s"}])).losses)
    assert [term.weight for term in resolved] == [1.0, 0.3]


def test_a_cnn_feature_map_is_pooled(tmp_path):
    torch.manual_seed(0)
    cnn = timm.create_model("vitkd_small_cnn", pretrained=False, num_classes=10, widths=(4, 8, 12))
    record = _toy_store(tmp_path / "store")
    term = EmbeddingTerm(_context(cnn, record), store=str(tmp_path / "store"), feature="features",
                         projection="linear", loss="cosine")
    assert term.loss.projection.in_features == 12
    _, _, tapped = forward_tapped(cnn, torch.randn(2, 3, 16, 16), TapRequest(hooks=term.needs.student_hooks))
    value = term(StudentOutputs(logits=torch.zeros(2, 10), hooked=tapped.hooked), TeacherOutputs(),
                 Targets(labels=torch.zeros(2, dtype=torch.long), sample_ids=torch.tensor([1, 2])))
    assert 0.0 <= value.item() <= 2.0


# ---------------------------------------------------------------------------------------------------------------------
# training


def test_training_with_ce_and_embedding_under_mixup(tiny_recipe, tmp_path, monkeypatch):
    import vitkd.losses.embedding as embedding_module

    mixed_batches = []
    real_mix = embedding_module.mix_embeddings
    monkeypatch.setattr(embedding_module, "mix_embeddings",
                        lambda targets, plan: mixed_batches.append(plan) or real_mix(targets, plan))
    raw = tiny_recipe(losses=[{"name": "ce"}, {"name": "embedding", "store": str(tmp_path / "store"), "tau": 0.05}])
    raw["data"].update(mixup=0.8, cutmix=1.0)
    raw["train"].update(epochs=1, max_steps_per_epoch=2)
    recipe = load_recipe(raw=raw)
    built = embed_targets(recipe, tmp_path / "store", model="vitkd_small_cnn", progress=False)
    assert (built.num_samples, built.dim) == (1437, 128)
    summary = train(recipe)
    assert summary["losses"] == {"ce": 1.0, "embedding": 0.3}
    assert len(mixed_batches) == 2 and all(plan.mixed.any() for plan in mixed_batches)  # targets mixed like images
    run_dir = tmp_path / "runs" / "tiny"
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and "embedding" in metrics[0]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert any(key.endswith("loss.projection.2.weight") for key in state["task"]["objective"])
    from safetensors.torch import load_file

    exported = load_file(str(run_dir / "export" / "student.safetensors"))
    assert not any("projection" in key for key in exported)
    # a store of other data (the validation split) is refused when the term is built, before any step
    embed_targets(load_recipe(raw=copy.deepcopy(raw), overrides=["data.train_split=val"]), tmp_path / "val_store",
                  model="vitkd_small_cnn", progress=False)
    other = tiny_recipe(losses=[{"name": "ce"}, {"name": "embedding", "store": str(tmp_path / "val_store")}])
    other["train"].update(epochs=1, max_steps_per_epoch=1, output_dir=str(tmp_path / "other"))
    with pytest.raises(ConfigError, match=r"losses.1 \(embedding\): embedding store .*val_store was built for "
                                          r"different settings.*\n  dataset.name: this run has \"digits/train\", "
                                          r"the store has \"digits/val\""):
        train(load_recipe(raw=other))
    with pytest.raises(ConfigError, match=r"losses.1 \(embedding\): embedding store .*none does not exist"):
        other = tiny_recipe(losses=[{"name": "ce"}, {"name": "embedding", "store": str(tmp_path / "none")}])
        other["train"].update(epochs=1, max_steps_per_epoch=1, output_dir=str(tmp_path / "other"))
        train(load_recipe(raw=other))
