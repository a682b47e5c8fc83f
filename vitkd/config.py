"""Typed recipe schema, YAML loading and dotted `key=value` overrides.

A recipe is a YAML file whose keys mirror the dataclasses below. Loading is strict: an unknown key, a value of the
wrong type, a missing required value, an unknown choice or an out-of-range number raises `ConfigError` naming the
key path (for example `data.batch_size`) and what would be valid, before any work starts.

This module is the bottom of the package: it knows no models, losses or tasks. What the names in a recipe mean
(model names, loss terms and their parameters, default weights) is checked one layer up, by the recipe's task
(`vitkd.tasks.resolve_recipe`), which the CLI and the engine call before building anything.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from vitkd.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RecipeYamlLoader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans (`amp: off` stays the string 'off'), `1e-3` is a float."""


RecipeYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# YAML 1.2 floats without a dot, e.g. `lr: 1e-3` (YAML 1.1 reads them as strings).
RecipeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """Parse recipe YAML (files and override values) with YAML 1.2 booleans."""
    return yaml.load(text, Loader=RecipeYamlLoader)


@dataclass
class ModelConfig:
    """A timm model by name, with timm keyword arguments and optional local weights.

    `checkpoint` may be a `.safetensors`/`.pt` file or a previous vitkd run directory. `mean`/`std` are the input
    normalisation the model expects; when unset the trainer uses the data normalisation.
    """

    name: str
    kwargs: dict = field(default_factory=dict)
    checkpoint: Optional[str] = None
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None


@dataclass
class TeacherConfig(ModelConfig):
    """The frozen teacher. `cache` (a sparse-logit cache directory) replaces the live teacher when set.

    `vitkd cache-logits` writes the cache into `cache` with K = `cache_topk`; training then reads it and refuses a
    cache of another K. Unset, K is 10 (or the class count when the dataset has fewer classes) for both.
    `cache_epochs_policy`: what training epochs beyond the cached ones do (`cycle` through the cached epochs, or
    `fail` before training starts).
    `channels_last`: run the live teacher in channels-last memory format (faster convolutions for CNN teachers on
    CUDA and oneDNN CPUs; the same numbers up to float summation order).
    """

    name: str = ""
    cache: Optional[str] = None
    cache_epochs_policy: Literal["cycle", "fail"] = "fail"
    cache_topk: Optional[int] = None
    channels_last: bool = False


@dataclass
class StudentInitConfig:
    """How the student's weights start from the teacher's (`teacher.name`, same width and heads; the student's
    `kwargs.depth` says how many blocks it keeps). Unset: timm's random initialisation (or `student.checkpoint`).

    `method`: `teacher_layers` (DistilBERT / XTC layer reduction: patch and position embeddings, prefix tokens, the
    chosen teacher blocks, final norm and head are copied) or `theseus` (BERT-of-Theseus progressive module
    replacement: the teacher's blocks grouped into depth_t / depth_s modules, each replaced by one student block with
    probability p during training; the student's blocks start as copies of the chosen teacher blocks).
    `layers`: the teacher blocks the student's blocks copy: a list of indices, `every_other` (1, 3, 5, ...: every
    second block, ending at the last), `uniform` (evenly spread, the last included) or `first`.
    Theseus schedule: `linear` p = min(1, replacing_rate + slope * step) (the released code's example: 0.1 and
    0.0006) or `constant` p = replacing_rate for `constant_steps` steps, then 1 (its example: 0.7 for 2500 steps).
    """

    method: str = "teacher_layers"
    layers: Union[list[int], str] = "uniform"
    schedule: str = "linear"
    replacing_rate: float = 0.1
    slope: float = 0.0006
    constant_steps: int = 2500


@dataclass
class QuantizeConfig:
    """Quantisation-aware training of the student (fake-quantised forward, straight-through gradients).

    `weight_bits`: 1 (sign(W) * mean|W|), 2 (ternary, TWN), 4 or 8 (symmetric uniform, torchao); per output row, or
    per `group_size` consecutive input weights of a row. `layers`: the layer kinds quantised (`qkv`, `proj`, `fc1`,
    `fc2`, `patch_embed`); the classifier head always stays full precision. `activation_bits`: 8 fake-quantises the
    inputs of those layers per token (torchao), null keeps them full precision. `split`: with `weight_bits: 1`, start
    from the (ternarised) weights and split each layer into an equal-output binary layer of twice the input width
    (BinaryBERT's ternary weight splitting).
    """

    weight_bits: int
    layers: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])
    group_size: Optional[int] = None
    activation_bits: Optional[int] = None
    split: bool = False


@dataclass
class StudentConfig(ModelConfig):
    """The student: a timm model (`ModelConfig`), optionally built from the teacher (`init`) and quantised
    (`quantize`)."""

    init: Optional[StudentInitConfig] = None
    quantize: Optional[QuantizeConfig] = None


@dataclass
class DataConfig:
    """Dataset, augmentation and loader settings. `dataset` is `digits` (bundled, offline) or `folder`."""

    dataset: Literal["digits", "folder"] = "digits"
    root: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    img_size: int = 224
    batch_size: int = 128
    eval_batch_size: Optional[int] = None
    num_workers: int = 2
    on_corrupt: Literal["fail", "skip"] = "fail"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # augmentation (timm create_transform)
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    # mixup / cutmix (timm Mixup) and label smoothing
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1


@dataclass
class LossTermConfig:
    """One loss term: a registered `name`, a weight (None = the term's paper default) and its parameters."""

    name: str
    weight: Optional[float] = None
    params: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimizer and schedule through timm's factories."""

    opt: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    momentum: float = 0.9
    clip_grad: Optional[float] = None
    sched: str = "cosine"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5


@dataclass
class TrainConfig:
    """Loop settings. `amp` is `off`, `auto` (bf16 on CPU, fp16 on CUDA), `bf16` or `fp16`.

    `cpu_threads`: intra-op threads of the training process (`torch.set_num_threads`); `None` keeps torch's default.
    On a small CPU, 1 thread plus `data.num_workers: 1` overlaps augmentation with compute.
    `log_every`: steps between reads of the loss sums (progress-bar loss, non-finite check). Losses accumulate on
    the device in between, so a GPU step never waits for the host; the bar's step count still moves every step.
    `nonfinite`: what a NaN/infinite total loss does: `stop` (training stops naming the step and every term) or
    `skip` (that step makes no update and is counted as `train/nonfinite_skipped`; more than `nonfinite_max_skips`
    in one epoch stops). `skip` reads the loss on the host before every update (one sync per step).
    `checkpoint_every`: also write `last.pt` inside epochs, every N optimizer steps (an integer) or every N minutes
    (`"30min"`); `--resume` continues from that exact step. `None`: at the end of each epoch only.
    `compile`: `torch.compile` the trained module (student and loss-term projections, inside the DDP wrapper) with
    this mode (`default`, `reduce-overhead`, `max-autotune`); `off` runs eager. `compile_backend`: the torch.compile
    backend (`inductor`; `aot_eager` or `eager` to debug a graph break). Evaluation and exports use the eager model.
    """

    epochs: int = 300
    seed: int = 0
    device: str = "auto"
    amp: Literal["off", "auto", "bf16", "fp16"] = "off"
    ema: bool = False
    ema_decay: float = 0.9998
    output_dir: str = "runs"
    tensorboard: bool = False
    max_steps_per_epoch: Optional[int] = None
    cpu_threads: Optional[int] = None
    deterministic: bool = True
    progress: bool = True
    log_every: int = 10
    nonfinite: Literal["stop", "skip"] = "stop"
    nonfinite_max_skips: int = 10
    checkpoint_every: Optional[Union[int, str]] = None
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    compile_backend: str = "inductor"


@dataclass
class DownstreamBackboneConfig:
    """How the student (the recipe's `student`: timm name, kwargs, and `checkpoint` -- a vitkd run directory, export
    or weights file; none: random weights) becomes a detection / segmentation backbone.

    `kind`: `plain` (a timm ViT/DeiT: ViTDet's simple feature pyramid from block `block_index`), `hierarchical`
    (TinyViT, Swin, CNNs: stage outputs `out_indices` into torchvision's FPN) or `auto` (plain for ViTs).
    `window_size`: ViTDet window attention in every block but `global_blocks` (default 4 evenly spaced); 0: global
    attention everywhere. `rel_pos`: ViTDet's decomposed relative position biases in every block of a plain ViT
    (zero-initialised tables learned while fine-tuning; ViTDet's COCO setting). `pyramid: false` keeps a plain
    ViT's stride-16 tokens alone (for the `linear` head).
    `out_channels`: width of every pyramid level. `freeze`: train the pyramid and heads only (linear probing).
    `drop_path_rate`: stochastic depth of the student while fine-tuning (null: as the student was built).
    `layer_decay`: layer-wise lr decay (timm's `layer_decay`): the lr of a layer at depth d below the top is
    lr * layer_decay ** d (pyramid and heads at lr); null: one lr everywhere.
    """

    kind: Literal["auto", "plain", "hierarchical"] = "auto"
    block_index: int = -1
    window_size: int = 0
    global_blocks: Optional[list[int]] = None
    rel_pos: bool = False
    pyramid: bool = True
    out_channels: int = 256
    out_indices: Optional[list[int]] = None
    freeze: bool = False
    drop_path_rate: Optional[float] = None
    layer_decay: Optional[float] = None


#: `DownstreamHeadConfig` keys passed to torchvision's detectors under the same names.
DETECTOR_SAMPLING_KEYS = ("rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                          "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image")


@dataclass
class DownstreamHeadConfig:
    """The task head. Detection (torchvision Faster / Mask R-CNN): `anchor_sizes` one per pyramid level (default
    8 x the level's stride), `aspect_ratios`, torchvision's resize bounds `min_size` / `max_size` (default: the
    fine-tune size `downstream.data.size`, both), `detections_per_img`, the widths `box_head_width` /
    `mask_head_width` (torchvision's 1024 / 256), `box_head` `2mlp` (torchvision's) or `4conv1fc` (ViTDet's: four
    3x3 convs then one fully connected layer), `rpn_convs` (3x3 convs in the RPN head; ViTDet 2), `conv_norm` `none`
    or `layernorm` (after the box and mask heads' convs; ViTDet's "LN"), and how many proposals and samples the
    detector keeps, under torchvision's names and with its defaults: `rpn_pre_nms_top_n_train` / `_test` (2000 /
    1000 anchors per level before NMS), `rpn_post_nms_top_n_train` / `_test` (2000 / 1000 proposals after it),
    `rpn_batch_size_per_image` (256 anchors sampled for the RPN loss) and `box_batch_size_per_image` (512 proposals
    sampled for the RoI heads; scenes with a few objects need far fewer, and the RoI-Align backward scales with it).
    Semantic segmentation: `name` `semantic_fpn` (Kirillov et al., `channels` wide) or `linear` (a linear map of the
    ViT's tokens; needs `backbone.pyramid: false`), `dropout`.
    """

    name: Literal["semantic_fpn", "linear"] = "semantic_fpn"
    anchor_sizes: Optional[list[int]] = None
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    detections_per_img: int = 100
    box_head_width: int = 1024
    mask_head_width: int = 256
    box_head: Literal["2mlp", "4conv1fc"] = "2mlp"
    rpn_convs: int = 1
    conv_norm: Literal["none", "layernorm"] = "none"
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    channels: int = 128
    dropout: float = 0.1


@dataclass
class DownstreamDataConfig:
    """Detection / segmentation data. `dataset`: `digit_scenes` (bundled, written on first use under `root` or the
    vitkd data folder), `coco` (COCO-format: `root` with `train_images`/`train_annotations` and `val_images`/
    `val_annotations`, paths relative to it) or `semantic_folder` (ADE20K layout: `root`/images/<split>/ and
    `root`/annotations/<split>/, splits `train_split` / `val_split`).

    Training augmentation: scale jitter by a factor in `scale_range`, horizontal flip with probability `hflip`, crop
    or pad to `size` x `size`. `reduce_zero_label` (ADE20K): stored 0 is ignored and v is class v - 1;
    `ignore_index`: the label that counts in no loss or metric; `num_classes`: the class count (null: the
    annotations' largest). Loader settings (`batch_size`, `eval_batch_size`, `num_workers`) are the recipe's `data`.
    """

    dataset: Literal["digit_scenes", "coco", "semantic_folder"] = "digit_scenes"
    root: Optional[str] = None
    train_images: str = "train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    val_images: str = "val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    train_split: str = "training"
    val_split: str = "validation"
    size: int = 1024
    scale_range: tuple[float, float] = (0.1, 2.0)
    hflip: float = 0.5
    reduce_zero_label: bool = False
    ignore_index: int = 255
    num_classes: Optional[int] = None


@dataclass
class DownstreamInferenceConfig:
    """How semantic segmentation evaluates an image: `mode` `whole` (the image at its own size in one forward) or
    `slide` (overlapping `crop` x `crop` windows every `stride` pixels, logits averaged where they overlap; `crop`
    defaults to `downstream.data.size`, `stride` to two thirds of the crop, mmseg's ADE20K 512 / 341)."""

    mode: Literal["whole", "slide"] = "whole"
    crop: Optional[int] = None
    stride: Optional[int] = None


@dataclass
class DownstreamConfig:
    """Fine-tuning the student as a backbone (tasks `detection`, `instance_segmentation`,
    `semantic_segmentation`): `backbone`, `head`, `data` and `inference` sections."""

    backbone: DownstreamBackboneConfig = field(default_factory=DownstreamBackboneConfig)
    head: DownstreamHeadConfig = field(default_factory=DownstreamHeadConfig)
    data: DownstreamDataConfig = field(default_factory=DownstreamDataConfig)
    inference: DownstreamInferenceConfig = field(default_factory=DownstreamInferenceConfig)

    def slide_window(self) -> tuple[int, int]:
        """(crop, stride) of sliding-window inference, defaults filled in."""
        crop = self.inference.crop or self.data.size
        return crop, self.inference.stride or max(1, round(2 * crop / 3))


@dataclass
class Recipe:
    """A whole training recipe. `task`: what is trained, a name registered in `vitkd.tasks` (default
    `classification`: image classification with distillation)."""

    name: str
    student: StudentConfig
    task: str = "classification"
    teacher: Optional[TeacherConfig] = None
    data: DataConfig = field(default_factory=DataConfig)
    losses: list[LossTermConfig] = field(default_factory=lambda: [LossTermConfig(name="ce")])
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    downstream: Optional[DownstreamConfig] = None

    @property
    def run_dir(self) -> Path:
        return Path(self.train.output_dir) / self.name


# ---------------------------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts with type checks


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (dict -> dataclass, list -> tuple...)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: dict[Any, ConfigError] = {}
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as error:
                errors[arg] = error
        # a mapping meant for the one dataclass arm (or a value for the one arm there is) fails for that arm's
        # reason, which names the key inside it, not with the whole mapping
        sections = [arg for arg in errors if dataclasses.is_dataclass(arg)] if isinstance(value, dict) else []
        if len(errors) == 1 or len(sections) == 1:
            raise (errors[sections[0]] if sections else next(iter(errors.values())))
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not a valid choice; valid choices: {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values ({_type_name(tp)}), got {value!r}")
        return tuple(_convert(v, a, f"{path}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {tp!r}")  # a schema bug, not a user error


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build_dataclass(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, raising `ConfigError` with the key path on any problem."""
    where = path or "recipe"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}, "
                          f"got {type(data).__name__} {data!r}")
    if cls is LossTermConfig:
        data = _split_loss_params(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            valid = sorted(fields)
            raise ConfigError(f"{_join(path, key)}: unknown key{_suggest(str(key), valid)}; valid keys: {', '.join(valid)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)} is required ({_type_name(hints[name])})")
    return cls(**kwargs)


def _split_loss_params(data: dict) -> dict:
    """Allow `{name: deit, weight: 0.5, mode: hard}`: every key but name/weight/params is a loss parameter."""
    params = dict(data.get("params") or {})
    flat = {k: v for k, v in data.items() if k not in ("name", "weight", "params")}
    twice = sorted(set(params) & set(flat))
    if twice:
        raise ConfigError(f"loss '{data.get('name')}': parameter(s) {twice} given both beside 'name' and under "
                          f"'params'; give each once")
    params.update(flat)
    out = {k: v for k, v in data.items() if k in ("name", "weight")}
    out["params"] = params
    return out


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# ---------------------------------------------------------------------------------------------------------------------
# Loading, overrides, dumping


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.0.c=value` into (['a', 'b', '0', 'c'], value); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=10)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, keys: list[str], value: Any) -> None:
    """Set a nested value in the raw recipe dict; list items are addressed by index (losses.1.weight=0.3)."""
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        node = _child(node, key, keys[: depth + 1], create=True)
    last = keys[-1]
    if not isinstance(node, (dict, list)):
        parent = ".".join(keys[:-1])
        raise ConfigError(f"override {'.'.join(keys)}: {parent} is a value ({node!r}), not a section with keys; "
                          f"set it with {parent}=VALUE")
    if isinstance(node, list):
        index = _list_index(node, last, keys)
        node[index] = value
    else:
        node[last] = value


def _child(node: Any, key: str, path: list[str], create: bool) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, key, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:-1])} is not a mapping")
    if node.get(key) is None:
        node[key] = {}
    return node[key]


def _list_index(node: list, key: str, path: list[str]) -> int:
    try:
        index = int(key)
    except ValueError:
        raise ConfigError(f"override {'.'.join(path)}: '{key}' must be a list index (0..{len(node) - 1})") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"override {'.'.join(path)}: index {index} out of range; the list has {len(node)} items")
    return index


def read_yaml_mapping(path: Path, kind: str) -> dict:
    """The top-level mapping of a YAML file (`kind`: "recipe file", "pipeline file"); a missing file, invalid YAML
    or another top-level value raises `ConfigError` naming the file."""
    if not path.is_file():
        raise ConfigError(f"{kind} {path} does not exist")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{kind} {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} {path} must contain a mapping at the top level")
    return data


def load_raw_recipe(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a recipe file. A `base: other.yaml` key (relative to this file) is loaded first and deep-merged under
    this file's keys, so recipes that differ in a few keys share one base."""
    path = Path(path)
    data = read_yaml_mapping(path, "recipe file")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    if base_path in _chain:
        raise ConfigError(f"recipe file {path}: 'base' chain loops back to {base_path}")
    return deep_merge(load_raw_recipe(base_path, _chain + (path.resolve(),)), data)


def deep_merge(base: dict, update: dict) -> dict:
    """Mappings merge key by key; any other value (lists included) in `update` replaces the base value.

    `kwargs` mappings (a model's timm arguments) replace wholesale: arguments of one architecture mean nothing to
    another, so a recipe that changes the model restates its kwargs."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "kwargs":
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                raw: dict | None = None) -> Recipe:
    """Load a YAML recipe (or a raw dict), apply `key=value` overrides and check it against the schema."""
    data = load_raw_recipe(path) if path is not None else dict(raw or {})
    if path is not None and "name" not in data:
        data["name"] = Path(path).stem
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    recipe = build_dataclass(Recipe, data)
    check_values(recipe)
    return recipe


def check_values(recipe: Recipe) -> None:
    """Checks beyond types that need no model, loss or data: required pairs of keys, value ranges, and the names timm
    resolves only deep inside training (optimizer, scheduler, interpolation, AutoAugment policy). Each error names the
    key, the value and what would be valid."""
    if recipe.teacher is not None:
        if not recipe.teacher.name and not recipe.teacher.cache:
            raise ConfigError("teacher.name is required (or teacher.cache, a sparse-logit cache directory)")
        if recipe.teacher.cache_topk is not None and recipe.teacher.cache_topk < 1:
            raise ConfigError(f"teacher.cache_topk must be a positive integer, got {recipe.teacher.cache_topk}")
    if recipe.data.dataset == "folder" and not recipe.data.root:
        raise ConfigError("data.root is required when data.dataset is 'folder' (a folder with train/ and val/)")
    for key, value, low, high, closed_low in _bounded_numbers(recipe):
        if value is None:
            continue
        below = value < low if closed_low else value <= low
        if below or (high is not None and value > high):
            bound = f">= {low:g}" if closed_low else f"> {low:g}"
            expected = f"{bound}{f' and <= {high:g}' if high is not None else ''}"
            raise ConfigError(f"{key} must be {expected}, got {value:g}")
    data = recipe.data
    if data.scale[0] > data.scale[1]:
        raise ConfigError(f"data.scale is (min, max) of the random-resized-crop area, got {list(data.scale)}")
    if data.label_smoothing >= 1.0:
        raise ConfigError(f"data.label_smoothing must be in [0, 1), got {data.label_smoothing:g}")
    if any(value <= 0 for value in data.std):
        raise ConfigError(f"data.std must be positive in every channel, got {list(data.std)}")
    if recipe.optim.min_lr > recipe.optim.lr:
        raise ConfigError(f"optim.min_lr ({recipe.optim.min_lr:g}) is above optim.lr ({recipe.optim.lr:g})")
    check_student_construction(recipe.student)
    checkpoint_interval(recipe.train.checkpoint_every)
    if recipe.downstream is not None:
        check_downstream(recipe.downstream)
        if recipe.downstream.inference.mode == "slide" and recipe.task != "semantic_segmentation":
            raise ConfigError(f"downstream.inference.mode: slide is semantic segmentation's sliding-window "
                              f"inference; task {recipe.task!r} evaluates whole images (mode: whole)")
    check_library_names(recipe)


#: Layer kinds of a ViT that `student.quantize.layers` may name.
QUANTIZABLE_LAYERS = ("qkv", "proj", "fc1", "fc2", "patch_embed")
#: Named choices of `student.init.layers`.
LAYER_CHOICES = ("every_other", "uniform", "first")
INIT_METHODS = ("teacher_layers", "theseus")
REPLACEMENT_SCHEDULES = ("linear", "constant")
WEIGHT_BITS = (1, 2, 4, 8)


def check_student_construction(student: StudentConfig) -> None:
    """`student.init` and `student.quantize` values that need no model: choices, ranges, pairs of keys."""
    init, quantize = student.init, student.quantize
    if init is not None:
        if init.method not in INIT_METHODS:
            raise ConfigError(f"student.init.method: {init.method!r} is not valid; valid: {', '.join(INIT_METHODS)}")
        if init.schedule not in REPLACEMENT_SCHEDULES:
            raise ConfigError(f"student.init.schedule: {init.schedule!r} is not valid; valid: "
                              f"{', '.join(REPLACEMENT_SCHEDULES)}")
        if isinstance(init.layers, str) and init.layers not in LAYER_CHOICES:
            raise ConfigError(f"student.init.layers: {init.layers!r} is not valid; use a list of teacher block "
                              f"indices or one of {', '.join(LAYER_CHOICES)}")
        if not 0.0 < init.replacing_rate <= 1.0:
            raise ConfigError(f"student.init.replacing_rate must be > 0 and <= 1, got {init.replacing_rate:g}")
        if init.slope < 0 or init.constant_steps < 0:
            raise ConfigError(f"student.init.slope and constant_steps must be >= 0, got {init.slope:g} and "
                              f"{init.constant_steps}")
        if student.checkpoint:
            raise ConfigError(f"student.init copies the teacher's weights, which student.checkpoint "
                              f"({student.checkpoint}) would replace; set one of them")
    if quantize is not None:
        if quantize.weight_bits not in WEIGHT_BITS:
            raise ConfigError(f"student.quantize.weight_bits: {quantize.weight_bits!r} is not valid; valid: 1 "
                              f"(binary), 2 (ternary), 4, 8")
        if quantize.activation_bits not in (None, 8):
            raise ConfigError(f"student.quantize.activation_bits: {quantize.activation_bits!r} is not valid; valid: 8 "
                              f"or null (full precision)")
        unknown = [kind for kind in quantize.layers if kind not in QUANTIZABLE_LAYERS]
        if unknown or not quantize.layers:
            raise ConfigError(f"student.quantize.layers: {unknown or 'an empty list'} is not valid; choose from "
                              f"{', '.join(QUANTIZABLE_LAYERS)} (the head always stays full precision)")
        if quantize.group_size is not None and quantize.group_size < 1:
            raise ConfigError(f"student.quantize.group_size must be a positive integer, got {quantize.group_size}")
        if quantize.split and quantize.weight_bits != 1:
            raise ConfigError(f"student.quantize.split makes a 1-bit student from ternary weights; set "
                              f"weight_bits: 1 (got {quantize.weight_bits})")


def check_downstream(downstream: DownstreamConfig) -> None:
    """`downstream` values that need no model or data: ranges and pairs of keys."""
    backbone, head, data = downstream.backbone, downstream.head, downstream.data
    bounded = [("downstream.backbone.window_size", backbone.window_size, 0, True),
               ("downstream.backbone.out_channels", backbone.out_channels, 0, False),
               ("downstream.backbone.drop_path_rate", backbone.drop_path_rate, 0, True),
               ("downstream.backbone.layer_decay", backbone.layer_decay, 0, False),
               ("downstream.head.min_size", head.min_size, 0, False),
               ("downstream.head.max_size", head.max_size, 0, False),
               ("downstream.head.detections_per_img", head.detections_per_img, 0, False),
               ("downstream.head.box_head_width", head.box_head_width, 0, False),
               ("downstream.head.mask_head_width", head.mask_head_width, 0, False),
               ("downstream.head.rpn_convs", head.rpn_convs, 0, False),
               *((f"downstream.head.{name}", getattr(head, name), 0, False) for name in DETECTOR_SAMPLING_KEYS),
               ("downstream.head.channels", head.channels, 0, False),
               ("downstream.data.size", data.size, 0, False),
               ("downstream.inference.crop", downstream.inference.crop, 0, False),
               ("downstream.inference.stride", downstream.inference.stride, 0, False),
               ("downstream.data.num_classes", data.num_classes, 0, False)]
    for key, value, low, closed in bounded:
        if value is not None and (value < low if closed else value <= low):
            raise ConfigError(f"{key} must be {'>=' if closed else '>'} {low}, got {value:g}")
    crop, stride = downstream.slide_window()
    if stride > crop:
        raise ConfigError(f"downstream.inference.stride ({stride}) is larger than the window "
                          f"(downstream.inference.crop {crop}): windows would leave pixels out; use a stride <= {crop}")
    if backbone.layer_decay is not None and backbone.layer_decay > 1:
        raise ConfigError(f"downstream.backbone.layer_decay must be in (0, 1], got {backbone.layer_decay:g}")
    if backbone.drop_path_rate is not None and backbone.drop_path_rate >= 1:
        raise ConfigError(f"downstream.backbone.drop_path_rate must be in [0, 1), got {backbone.drop_path_rate:g}")
    if not 0.0 <= head.dropout < 1.0:
        raise ConfigError(f"downstream.head.dropout must be in [0, 1), got {head.dropout:g}")
    if head.anchor_sizes is not None and (not head.anchor_sizes or min(head.anchor_sizes) <= 0):
        raise ConfigError(f"downstream.head.anchor_sizes must be positive pixel sizes, one per pyramid level, got "
                          f"{head.anchor_sizes}")
    if not head.aspect_ratios or min(head.aspect_ratios) <= 0:
        raise ConfigError(f"downstream.head.aspect_ratios must be positive height/width ratios, got "
                          f"{head.aspect_ratios}")
    if head.min_size and head.max_size and head.min_size > head.max_size:
        raise ConfigError(f"downstream.head.min_size ({head.min_size}) is above max_size ({head.max_size})")
    if not 0 < data.scale_range[0] <= data.scale_range[1]:
        raise ConfigError(f"downstream.data.scale_range must be [low, high] with 0 < low <= high, got "
                          f"{list(data.scale_range)}")
    if not 0.0 <= data.hflip <= 1.0:
        raise ConfigError(f"downstream.data.hflip must be in [0, 1], got {data.hflip:g}")
    if data.dataset != "digit_scenes" and not data.root:
        raise ConfigError(f"downstream.data.root is required when downstream.data.dataset is '{data.dataset}'")


def checkpoint_interval(value: Optional[Union[int, str]]) -> tuple[Optional[int], Optional[float]]:
    """`train.checkpoint_every` as (steps, seconds), at most one of them set: 500 -> (500, None), "30min" ->
    (None, 1800.0), None -> (None, None). Raises `ConfigError` for anything else."""
    if value is None:
        return None, None
    if isinstance(value, int) and value > 0:
        return value, None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:min|m|minutes?)\s*", str(value))
    if isinstance(value, str) and match and float(match.group(1)) > 0:
        return None, float(match.group(1)) * 60.0
    raise ConfigError(f"train.checkpoint_every must be a positive number of steps (500) or of minutes ('30min'), "
                      f"got {value!r}")


def _bounded_numbers(recipe: Recipe) -> list[tuple[str, Optional[float], float, Optional[float], bool]]:
    """(key, value, low, high or None, low included?) for every bounded number of a recipe."""
    data, optim, train = recipe.data, recipe.optim, recipe.train
    return [
        ("data.img_size", data.img_size, 0, None, False),
        ("data.batch_size", data.batch_size, 0, None, False),
        ("data.eval_batch_size", data.eval_batch_size, 0, None, False),
        ("data.num_workers", data.num_workers, 0, None, True),
        ("data.scale[0]", data.scale[0], 0, 1, False),
        ("data.scale[1]", data.scale[1], 0, 1, False),
        ("data.hflip", data.hflip, 0, 1, True),
        ("data.color_jitter", data.color_jitter, 0, None, True),
        ("data.re_prob", data.re_prob, 0, 1, True),
        ("data.crop_pct", data.crop_pct, 0, 1, False),
        ("data.mixup", data.mixup, 0, None, True),
        ("data.cutmix", data.cutmix, 0, None, True),
        ("data.mixup_prob", data.mixup_prob, 0, 1, True),
        ("data.mixup_switch_prob", data.mixup_switch_prob, 0, 1, True),
        ("data.label_smoothing", data.label_smoothing, 0, None, True),
        ("optim.lr", optim.lr, 0, None, False),
        ("optim.weight_decay", optim.weight_decay, 0, None, True),
        ("optim.momentum", optim.momentum, 0, 1, True),
        ("optim.clip_grad", optim.clip_grad, 0, None, False),
        ("optim.warmup_epochs", optim.warmup_epochs, 0, None, True),
        ("optim.warmup_lr", optim.warmup_lr, 0, None, True),
        ("optim.min_lr", optim.min_lr, 0, None, True),
        ("train.epochs", train.epochs, 0, None, False),
        ("train.ema_decay", train.ema_decay if train.ema else None, 0, 1, False),
        ("train.max_steps_per_epoch", train.max_steps_per_epoch, 0, None, False),
        ("train.nonfinite_max_skips", train.nonfinite_max_skips, 0, None, True),
        ("train.log_every", train.log_every, 0, None, False),
        ("train.cpu_threads", train.cpu_threads, 0, None, False),
    ]


#: Schedulers `timm.scheduler.create_scheduler_v2` builds.
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant", "wsd", "rsqrt", "none")
#: `data.interpolation` values timm's transforms take.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")


def check_library_names(recipe: Recipe) -> None:
    """Names timm would reject only once training starts (after data and models load), checked now."""
    from timm.optim import list_optimizers

    optimizers = list_optimizers()
    opt = recipe.optim.opt.lower()
    if opt.split("_")[-1] not in optimizers:
        raise ConfigError(f"optim.opt: unknown optimizer {recipe.optim.opt!r}{_close_to(opt, optimizers)}; timm has "
                          f"{len(optimizers)}, e.g. adamw, sgd, lamb, lion (timm.optim.list_optimizers())")
    if opt.startswith(("fused", "bnb")):
        needs = "NVIDIA apex" if opt.startswith("fused") else "bitsandbytes"
        raise ConfigError(f"optim.opt={recipe.optim.opt} needs {needs} and a CUDA device, which vitkd does not "
                          f"install; use its plain form ({opt.removeprefix('fused').removeprefix('bnb')})")
    if recipe.optim.sched not in SCHEDULERS:
        raise ConfigError(f"optim.sched: unknown scheduler {recipe.optim.sched!r}"
                          f"{_close_to(recipe.optim.sched, SCHEDULERS)}; valid: {', '.join(SCHEDULERS)}")
    if recipe.data.interpolation not in INTERPOLATIONS:
        raise ConfigError(f"data.interpolation: unknown mode {recipe.data.interpolation!r}; valid: "
                          f"{', '.join(INTERPOLATIONS)}")
    policy = recipe.data.auto_augment
    if policy:
        try:
            _build_auto_augment(policy)
        except Exception as error:  # timm raises AssertionError/KeyError/ValueError for a policy it cannot parse
            raise ConfigError(f"data.auto_augment: timm cannot parse {policy!r} ({type(error).__name__}: {error}); "
                              f"valid: a RandAugment string such as rand-m9-mstd0.5-inc1, augmix-m5-w3, an "
                              f"AutoAugment policy (original, originalr, v0, v0r, 3a), or null") from None
    if recipe.train.compile != "off":
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if recipe.train.compile_backend not in backends:
            raise ConfigError(f"train.compile_backend: torch.compile has no backend {recipe.train.compile_backend!r}"
                              f"{_close_to(recipe.train.compile_backend, backends)}; valid: {', '.join(backends)}")


def _build_auto_augment(policy: str) -> None:
    """Parse `policy` the way timm's training transform does (raises on a string timm cannot use)."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hparams = {"translate_const": 100, "img_mean": (124, 116, 104)}
    if policy.startswith("rand"):
        rand_augment_transform(policy, hparams)
    elif policy.startswith("augmix"):
        augment_and_mix_transform(policy, hparams)
    else:
        auto_augment_transform(policy, hparams)


def _close_to(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain dict of a recipe (tuples as lists) for YAML/JSON dumps and checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(recipe))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
