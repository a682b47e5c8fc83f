"""Bad input under every command: one line naming what is wrong and what would be valid, exit status 2, no
traceback, and nothing finished lost. Each case runs `vitkd ...` in-process as a user would type it.

Cases: recipe values (checked before data or models load), dataset folders, images, checkpoints and weights
files, evaluation, caches, runs. `test_the_suite_tries_as_many_cases_as_the_readme_says` keeps the README's count true.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vitkd.cli import main

# ---------------------------------------------------------------------------------------------------------------------
# recipe values: `vitkd train tiny.yaml KEY=VALUE`

RECIPE_CASES = [
    ("optim.learning_rate=0.1", r"optim\.learning_rate: unknown key; valid keys: clip_grad, lr, min_lr"),
    ("optim.opt=adamx", r"optim\.opt: unknown optimizer 'adamx' \(did you mean 'adamax'\?\)"),
    ("optim.opt=fusedlamb", r"optim\.opt=fusedlamb needs NVIDIA apex and a CUDA device"),
    ("optim.sched=cosin", r"optim\.sched: unknown scheduler 'cosin' \(did you mean 'cosine'\?\); valid: cosine"),
    ("optim.lr=-1", r"optim\.lr must be > 0, got -1"),
    ("optim.lr=fast", r"optim\.lr: expected a number, got str 'fast'"),
    ("optim.lr.x=1", r"override optim\.lr\.x: optim\.lr is a value \(0\.002\), not a section"),
    ("optim.momentum=-1", r"optim\.momentum must be >= 0 and <= 1, got -1"),
    ("optim.warmup_epochs=-1", r"optim\.warmup_epochs must be >= 0, got -1"),
    ("optim.weight_decay=-1", r"optim\.weight_decay must be >= 0, got -1"),
    ("optim.clip_grad=-1", r"optim\.clip_grad must be > 0, got -1"),
    ("optim.min_lr=-1", r"optim\.min_lr must be >= 0, got -1"),
    ("optim.min_lr=1", r"optim\.min_lr \(1\) is above optim\.lr \(0\.002\)"),
    ("train.ema=true train.ema_decay=2", r"train\.ema_decay must be > 0 and <= 1, got 2"),
    ("train.epochs=0", r"train\.epochs must be > 0, got 0"),
    ("train.epochs=2.5", r"train\.epochs: expected an integer, got float 2\.5"),
    ("train.device=tpu", r"train\.device=tpu is not a device; use auto, cpu, cuda or cuda:N"),
    ("train.device=cuda", r"train\.device=cuda but CUDA is not available here"),
    ("train.amp=fp16", r"train\.amp=fp16 needs a CUDA device"),
    ("train.amp=fp8", r"train\.amp: 'fp8' is not a valid choice; valid choices: 'off', 'auto', 'bf16', 'fp16'"),
    ("train.cpu_threads=0", r"train\.cpu_threads must be > 0, got 0"),
    ("train.log_every=0", r"train\.log_every must be > 0, got 0"),
    ("train.nonfinite=ignore", r"train\.nonfinite: 'ignore' is not a valid choice"),
    ("train.checkpoint_every=soon", r"train\.checkpoint_every must be a positive number of steps"),
    ("train.max_steps_per_epoch=0", r"train\.max_steps_per_epoch must be > 0, got 0"),
    ("data.crop_pct=0", r"data\.crop_pct must be > 0 and <= 1, got 0"),
    ("data.scale=[1,0.5]", r"data\.scale is \(min, max\) of the random-resized-crop area, got \[1\.0, 0\.5\]"),
    ("data.hflip=2", r"data\.hflip must be >= 0 and <= 1, got 2"),
    ("data.mixup=-1", r"data\.mixup must be >= 0, got -1"),
    ("data.cutmix=-1", r"data\.cutmix must be >= 0, got -1"),
    ("data.mixup_prob=2", r"data\.mixup_prob must be >= 0 and <= 1, got 2"),
    ("data.label_smoothing=1.5", r"data\.label_smoothing must be in \[0, 1\), got 1\.5"),
    ("data.re_prob=2", r"data\.re_prob must be >= 0 and <= 1, got 2"),
    ("data.interpolation=foo", r"data\.interpolation: unknown mode 'foo'; valid: bilinear, bicubic"),
    ("data.auto_augment=bogus", r"data\.auto_augment: timm cannot parse 'bogus'"),
    ("data.std=[0,1,1]", r"data\.std must be positive in every channel"),
    ("data.mean=[1,2]", r"data\.mean: expected a list of 3 values"),
    ("data.eval_batch_size=0", r"data\.eval_batch_size must be > 0, got 0"),
    ("data.batch_size=0", r"data\.batch_size must be > 0, got 0"),
    ("data.num_workers=-1", r"data\.num_workers must be >= 0, got -1"),
    ("data.dataset=imagenet", r"data\.dataset: 'imagenet' is not a valid choice; valid choices: 'digits', 'folder'"),
    ("data.dataset=folder", r"data\.root is required when data\.dataset is 'folder'"),
    ("data.val_split=test", r"the digits dataset has no split 'test'; its splits are train, val"),
    ("data.img_size=32", r"student: the model was built for 16x16 inputs but data\.img_size is 32; set "
                         r"student\.kwargs\.img_size: 32"),
    ("student.name=vit_nope", r"student\.name: unknown model 'vit_nope'"),
    ("student.kwargs.num_heads=3", r"model 'vit_tiny_patch16_224' rejected its kwargs .*dim should be divisible"),
    ("student.kwargs.foo=1", r"model 'vit_tiny_patch16_224' rejected its kwargs .*unexpected keyword argument 'foo'"),
    ("student.kwargs.num_classes=5", r"student\.kwargs\.num_classes=5 but the dataset has 10 classes"),
    ('losses=[{"name":"kld"}]', r"unknown loss"),
    ("losses.0.name=kld", r"losses: expected a list, got dict"),
    ("task=detecton", r"unknown task 'detecton' \(did you mean 'detection'\?\)"),
    ("teacher.cache_topk=0", r"teacher\.name is required|teacher\.cache_topk must be a positive integer"),
    # unknown keys inside optional sections are named, not the whole section dumped
    ("teacher.nme=x", r"^vitkd train: error: teacher\.nme: unknown key \(did you mean 'name'\?\); valid keys:"),
    ("student.init.methd=x", r"^vitkd train: error: student\.init\.methd: unknown key \(did you mean 'method'\?\)"),
    ("student.quantize.weight_bit=1", r"^vitkd train: error: student\.quantize\.weight_bit: unknown key \(did you "
                                      r"mean 'weight_bits'\?\)"),
    ("task=detection downstream.head.box_batch_size_per_image=0",
     r"downstream\.head\.box_batch_size_per_image must be > 0, got 0"),
    ("task=detection downstream.inference.mode=slide",
     r"downstream\.inference\.mode: slide is semantic segmentation's sliding-window inference; task 'detection'"),
    ("task=semantic_segmentation downstream.inference.mode=slide downstream.inference.crop=64 "
     "downstream.inference.stride=65", r"downstream\.inference\.stride \(65\) is larger than the window"),
    ("downstream.head.rpn_batch=8", r"^vitkd train: error: downstream\.head\.rpn_batch: unknown key; valid keys: "
                                    r"anchor_sizes, .*rpn_batch_size_per_image"),
    ("train.epochs", r"override 'train\.epochs' is not of the form key=value"),
    ("train.output_dir=tiny.yaml/runs", r"train\.output_dir: cannot write the run directory tiny\.yaml/runs/tiny "
                                        r"\(Not a directory\); choose a writable train\.output_dir"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_recipe):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = tiny_recipe()
    raw["train"].update(epochs=1, max_steps_per_epoch=1)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def _assert_one_line_error(code: int, err: str, command: str, pattern: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith(f"vitkd {command}: error: ")]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), errors[0]


@pytest.mark.parametrize("override, pattern", RECIPE_CASES, ids=[case[0] for case in RECIPE_CASES])
def test_bad_recipe_values(workdir, capsys, override, pattern):
    code, err = _run(capsys, "train", "tiny.yaml", *override.split())
    _assert_one_line_error(code, err, "train", pattern)
    assert not (workdir / "runs" / "tiny" / "checkpoints").exists()  # refused before any training


# ---------------------------------------------------------------------------------------------------------------------
# dataset folders and images: `vitkd train tiny.yaml data.dataset=folder data.root=...`


def _folder(root: Path, splits=("train", "val"), classes=("ant", "bee")) -> Path:
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (40 * i, 90, 20)).save(root / split / name / f"{i}.png")
    return root


def _extra_val_class(root):
    _folder(root / "data", splits=("val",), classes=("wasp",))


def _empty_class(root):
    (root / "data" / "train" / "cat").mkdir()


def _stray_image(root):
    Image.new("RGB", (4, 4)).save(root / "data" / "train" / "stray.jpg")


def _nested_folder(root):
    (root / "data" / "train" / "ant" / "more").mkdir()
    Image.new("RGB", (4, 4)).save(root / "data" / "train" / "ant" / "more" / "x.png")


def _no_val(root):
    import shutil
    shutil.rmtree(root / "data" / "val")


def _corrupt_image(root):
    (root / "data" / "train" / "ant" / "9.jpg").write_bytes(b"\xff\xd8 not a jpeg")


def _int32_image(root):
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(root / "data" / "train" / "bee" / "9.tif")


def _float_image(root):
    Image.fromarray(np.full((4, 4), 3.0, np.float32)).save(root / "data" / "train" / "bee" / "9.tif")


def _empty_split(root):
    for image in (root / "data" / "val").rglob("*.png"):
        image.unlink()


FOLDER_CASES = [
    (_extra_val_class, [], r"val has class folders the training split does not have: wasp"),
    (_empty_class, [], r"class folder\(s\) without images in .*train: cat"),
    (_stray_image, [], r"1 image\(s\) under .*train are not in a class folder .*stray\.jpg"),
    (_nested_folder, [], r"1 image\(s\) under .*train are not in a class folder .*more/x\.png"),
    (_no_val, [], r"split folder .*val does not exist; .* has: \['train'\]"),
    (_empty_split, [], r"no images found under .*val"),
    (_corrupt_image, [], r"cannot read image .*9\.jpg: .*data\.on_corrupt=skip"),
    (_corrupt_image, ["data.num_workers=1"], r"cannot read image .*9\.jpg: .*data\.on_corrupt=skip"),  # in a worker
    (_int32_image, [], r"cannot read image .*9\.tif: mode I has no defined 8-bit conversion"),
    (_float_image, ["data.num_workers=1"], r"cannot read image .*9\.tif: mode F .* values in \[3, 3\]"),
    (None, ["data.root=nowhere"], r"data\.root nowhere does not exist"),
    (None, ["data.train_split=training"], r"split folder .*training does not exist; .* has: \['train', 'val'\]"),
]


@pytest.mark.parametrize("damage, extra, pattern", FOLDER_CASES,
                         ids=[f"{case[0].__name__ if case[0] else 'paths'}{'-' + case[1][0] if case[1] else ''}"
                              for case in FOLDER_CASES])
def test_bad_dataset_folders_and_images(workdir, capsys, damage, extra, pattern):
    _folder(workdir / "data")
    if damage is not None:
        damage(workdir)
    overrides = ["data.dataset=folder", "data.root=data", "data.batch_size=5", "train.max_steps_per_epoch=null", *extra]
    code, err = _run(capsys, "train", "tiny.yaml", *overrides)
    _assert_one_line_error(code, err, "train", pattern)


def test_skipped_images_are_named_once(workdir, capsys):
    _folder(workdir / "data")
    _corrupt_image(workdir)
    code = main(["train", "tiny.yaml", "data.dataset=folder", "data.root=data", "data.batch_size=4",
                 "data.on_corrupt=skip", "train.epochs=2", "train.max_steps_per_epoch=null"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    reports = [line for line in (captured.out + captured.err).splitlines() if "data.on_corrupt=skip: skipped" in line]
    assert len(reports) == 1 and "9.jpg" in reports[0]  # two epochs, one line


# ---------------------------------------------------------------------------------------------------------------------
# weights, checkpoints, evaluation, caches and runs


@pytest.fixture
def trained_run(workdir, capsys):
    assert main(["train", "tiny.yaml"]) == 0
    capsys.readouterr()
    return workdir / "runs" / "tiny"


def _junk(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


class _NotATensor:
    pass


WEIGHTS_CASES = [
    (lambda d: _junk(d / "junk.pt", b"hello"), r"junk\.pt is not a PyTorch checkpoint"),
    (lambda d: _junk(d / "empty.pt", b""), r"empty\.pt is not a PyTorch checkpoint"),
    (lambda d: (torch.save({"a": _NotATensor()}, d / "objects.pt"), str(d / "objects.pt"))[1],
     r"objects\.pt holds Python objects besides tensors \(it stores .*_NotATensor\), which vitkd does not unpickle"),
    (lambda d: (torch.save({"epoch": 3}, d / "nomodel.pt"), str(d / "nomodel.pt"))[1],
     r"nomodel\.pt holds no model state_dict"),
    (lambda d: _junk(d / "junk.safetensors", b"xx"), r"cannot read .*junk\.safetensors as safetensors"),
    (lambda d: str(d / "missing.pt"), r"checkpoint .*missing\.pt does not exist"),
    (lambda d: (d.joinpath("emptydir").mkdir(), str(d / "emptydir"))[1],
     r"emptydir is a directory but holds no vitkd weights"),
]


@pytest.mark.parametrize("make, pattern", WEIGHTS_CASES, ids=["text", "empty", "objects", "no-model", "safetensors",
                                                              "missing", "empty-dir"])
def test_files_that_are_not_weights(workdir, capsys, make, pattern):
    path = make(workdir)
    code, err = _run(capsys, "eval", path, "--model", "vit_tiny_patch16_224", "--img-size", "16")
    _assert_one_line_error(code, err, "eval", pattern)


def _checksums(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}


def test_eval_and_run_errors_lose_nothing(trained_run, capsys):
    run = trained_run
    before = _checksums(run)
    folder = _folder(run.parent.parent / "two_classes")
    cases = [
        (("eval", str(run), "--split", "test"), "eval", r"the digits dataset has no split 'test'"),
        (("eval", str(run), "--dataset", "folder"), "eval", r"the 'folder' dataset needs its root folder: .*--root"),
        (("eval", str(run), "--dataset", "folder", "--root", str(folder)), "eval",
         r"split .*val has class folders the training split does not have: ant, bee"),
        (("eval", str(run / "export" / "student.safetensors"), "--dataset", "folder", "--root", str(folder),
          "--img-size", "16", "--model", "vit_tiny_patch16_224", "--model-kwargs",
          json.dumps({"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
                      "num_classes": 10})),
         "eval", r"the model's head has 10 classes but the dataset has 2"),
        (("eval", str(run), "--model", "vit_tiny_patch16_224", "--model-kwargs", "{bad"), "eval",
         r"--model-kwargs '\{bad' is not JSON"),
        (("eval", str(run), "--model", "resnet18"), "eval", r"resnet18|another architecture|mismatch|missing"),
        (("train", "tiny.yaml"), "train", r"already holds a checkpoint; pass --resume"),
        (("train", "tiny.yaml", "--resume", "optim.lr=0.1"), "train",
         r"--resume: the recipe differs .*optim\.lr: 0\.002 -> 0\.1"),
        (("train", "tiny.yaml", "--resume", "name=other"), "train", r"--resume: no checkpoint at .*other"),
        (("cache-info", str(run)), "cache-info", r"no manifest\.json in .*not a vitkd logit cache"),
        (("train", "missing.yaml"), "train", r"missing\.yaml"),
    ]
    assert len(cases) == EVAL_AND_RUN_CASES
    for argv, command, pattern in cases:
        code, err = _run(capsys, *argv)
        _assert_one_line_error(code, err, command, pattern)
    assert _checksums(run) == before  # no refused command touched the finished run


def test_a_full_disk_is_named_before_training(workdir, capsys, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 10 * 2**20 - 4096, 4096))
    code, err = _run(capsys, "train", "tiny.yaml")
    _assert_one_line_error(code, err, "train", r"train\.output_dir: .*runs/tiny has 0 MiB free but this run's "
                                               r"checkpoints need about \d+ MiB \(last, best and a temporary copy")
    assert not (workdir / "runs" / "tiny" / "checkpoints").exists()


EVAL_AND_RUN_CASES = 11  # the cases of test_eval_and_run_errors_lose_nothing
OTHER_CASES = 2  # test_a_full_disk_is_named_before_training, test_skipped_images_are_named_once


def test_the_suite_tries_as_many_cases_as_the_readme_says():
    stated = re.search(r"`tests/test_bad_input\.py` feeds (\d+) such inputs",
                       (Path(__file__).resolve().parents[1] / "README.md").read_text())
    assert stated, "the README no longer states how many bad inputs the suite tries"
    tried = len(RECIPE_CASES) + len(FOLDER_CASES) + len(WEIGHTS_CASES) + EVAL_AND_RUN_CASES + OTHER_CASES
    assert tried == int(stated.group(1))
