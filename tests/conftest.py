"""Shared fixtures. Tests never touch the network: a stray pretrained=True fails fast instead of retrying the hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_VIT_KWARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_recipe_dict(tmp_path, **sections) -> dict:
    """A recipe that trains a 2-block ViT on the digits in seconds; sections override top-level keys."""
    recipe = {
        "name": "tiny",
        "student": {"name": "vit_tiny_patch16_224", "kwargs": dict(TINY_VIT_KWARGS)},
        "data": {"dataset": "digits", "img_size": 16, "batch_size": 32, "num_workers": 0, "mean": [0.5] * 3,
                 "std": [0.5] * 3, "scale": [0.7, 1.0], "hflip": 0.0, "auto_augment": None, "re_prob": 0.0,
                 "color_jitter": 0.0, "crop_pct": 1.0, "interpolation": "bilinear"},
        "optim": {"lr": 2e-3, "warmup_epochs": 0},
        "train": {"epochs": 2, "output_dir": str(tmp_path / "runs"), "progress": False},
    }
    recipe.update(sections)
    return recipe


@pytest.fixture
def tiny_recipe(tmp_path):
    return lambda **sections: tiny_recipe_dict(tmp_path, **sections)


def cache_identity_dict(num_samples: int, topk: int, num_classes: int) -> dict:
    """`SparseLogitWriter` identity keywords of a toy logit cache (teacher weights hash "a" * 64, samples hash
    "b" * 64, augmentation hash "aug-v1"); spread it into the writer: `SparseLogitWriter(path, **identity)`."""
    return dict(
        num_samples=num_samples,
        topk=topk,
        num_classes=num_classes,
        teacher_id={"name": "toy_teacher", "weights_hash": "a" * 64},
        dataset_fingerprint={"num_samples": num_samples, "samples_hash": "b" * 64},
        augmentation_hash="aug-v1",
    )


@pytest.fixture
def cache_identity():
    """`cache_identity(num_samples, topk, num_classes)`: the writer keywords of a toy logit cache."""
    return cache_identity_dict


@pytest.fixture
def interrupt_training(monkeypatch):
    """`disarm = interrupt_training(epoch, error=KeyboardInterrupt)`: the engine raises `error` when training epoch
    `epoch` (0-based) starts, as a killed run would stop there; `disarm()` restores the real loop for the resume."""
    from vitkd.engine.trainer import Trainer

    original = Trainer.train_one_epoch

    def arm(epoch: int, error: type[BaseException] = KeyboardInterrupt):
        def stop_at_epoch(self, current):
            if current == epoch:
                raise error()
            return original(self, current)

        monkeypatch.setattr(Trainer, "train_one_epoch", stop_at_epoch)
        return lambda: monkeypatch.setattr(Trainer, "train_one_epoch", original)

    return arm


def spawn_and_wait(worker, args: tuple, nprocs: int = 2, timeout: float = 120.0) -> None:
    """Run `worker(rank, *args)` in `nprocs` spawned processes (gloo tests); a worker's exception is re-raised here,
    and workers still running after `timeout` seconds are killed and the test fails."""
    import time

    import torch.multiprocessing as mp

    workers = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not workers.join(timeout=1):  # re-raises a worker's exception
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail(f"{nprocs} spawned workers did not finish within {timeout:g} s")


def load_benchmark(name: str):
    """The benchmark script `benchmarks/<name>.py` (outside the package) loaded as a module, executed per call."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
