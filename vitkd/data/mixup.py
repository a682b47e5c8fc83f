"""Replayable Mixup/CutMix: every random choice derives from the per-sample augmentation seeds of the batch.

timm's `Mixup` draws its lambda, its mixup-or-cutmix switch and its CutMix box from the global NumPy RNG, so a
batch can not be mixed the same way twice. `SeededMixup` makes the same choices per sample ("elem" mode) from a
NumPy RNG seeded by that sample's augmentation seed (itself a hash of base seed, epoch and sample id, see
`vitkd.data.seeded`). For sample i of a batch of B, in this order:

1. apply?      uniform() < prob                                  (not applied: the image and label stay as they are)
2. CutMix?     uniform() < switch_prob when both are on, else whichever is on
3. lambda      beta(alpha, alpha) of the chosen method
4. partner     the batch position (i + 1 + randint(B - 1)) mod B: another image of the same batch
5. CutMix box  timm's `cutmix_bbox_and_lam` (square box of area 1 - lambda, clipped; lambda corrected to the area)

Mixed image i = lambda * x[i] + (1 - lambda) * x[partner] (Mixup) or x[i] with the box pasted from x[partner]
(CutMix), always computed from the unmixed batch; the target mixes the (label-smoothed) one-hot labels the same
way. The result is a pure function of the batch (its images, labels, seeds and order): the caching run and
training that see the same batch produce bitwise the same mixed images, on any device, because the mixing is
plain elementwise multiply/add and copies. Which samples form a batch is fixed by the train sampler (seed, epoch,
batch size, world size); `vitkd.data.replay` re-creates the batches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from timm.data.mixup import cutmix_bbox_and_lam, one_hot

from vitkd.config import DataConfig
from vitkd.errors import ConfigError

#: Version of the sampling procedure above; part of the augmentation recipe hashed into logit caches.
MIX_ALGORITHM = "vitkd-seeded-mixup-v1"
#: Mixed into each sample's seed so the mixing draws are independent of the transform's draws under the same seed.
MIX_SEED_TAG = 0x6D697875  # "mixu"


@dataclass
class MixPlan:
    """Per-sample Mixup/CutMix decisions of one batch of B samples (CPU tensors).

    partner: (B,) int64 batch position of the image mixed into sample i (i itself when sample i is not mixed).
    lam: (B,) float32 weight of sample i's own image and label (1.0 when not mixed; area-corrected for CutMix).
    cutmix: (B,) bool, True where sample i gets a CutMix box, False for Mixup (or no mixing).
    boxes: (B, 4) int64 CutMix box (y_low, y_high, x_low, x_high), zeros on other rows.
    """

    partner: torch.Tensor
    lam: torch.Tensor
    cutmix: torch.Tensor
    boxes: torch.Tensor

    @property
    def mixed(self) -> torch.Tensor:
        """(B,) bool: samples whose image differs from the unmixed one."""
        return self.lam < 1.0


@contextlib.contextmanager
def _numpy_global_state() -> Iterator[None]:
    """Restore NumPy's global RNG after the block (timm's box helpers draw from it; we seed it per sample)."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


def mix_seed(seed: int) -> int:
    """The 32-bit seed of a sample's mixing draws, derived from its augmentation seed."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, MIX_SEED_TAG]).generate_state(1, np.uint32)[0])


class SeededMixup:
    """Mixup/CutMix whose every random choice comes from the batch's per-sample seeds (see the module docstring).

    Args:
        num_classes: C, for the soft targets.
        mixup_alpha: Beta(alpha, alpha) parameter of Mixup; 0 turns Mixup off.
        cutmix_alpha: Beta(alpha, alpha) parameter of CutMix; 0 turns CutMix off.
        prob: probability that a sample is mixed at all.
        switch_prob: probability of CutMix rather than Mixup when both are on.
        label_smoothing: smoothing of the one-hot labels before they are mixed (timm's convention: off = s / C,
            on = 1 - s + s / C).
        cutmix_minmax: optional (min, max) box side ratios (timm's min-max CutMix; lambda then follows the box).
        correct_lam: correct lambda to the clipped CutMix box area (timm's default).

    Call: `mixup(images (B, 3, H, W), labels (B,), seeds (B,)) -> (mixed images (B, 3, H, W), targets (B, C))`.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1,
                 cutmix_minmax: Optional[Sequence[float]] = None, correct_lam: bool = True) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alpha must be >= 0, got mixup={mixup_alpha}, cutmix={cutmix_alpha}")
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2 or not 0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1:
                raise ValueError(f"cutmix_minmax must be (min, max) with 0 < min < max <= 1, got {cutmix_minmax}")
            cutmix_alpha = cutmix_alpha or 1.0  # the box sizes come from minmax; alpha only switches CutMix on
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError("SeededMixup needs mixup_alpha > 0 or cutmix_alpha > 0 (use no mixer otherwise)")
        for name, value in (("prob", prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.num_classes = int(num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self.cutmix_minmax = tuple(float(v) for v in cutmix_minmax) if cutmix_minmax is not None else None
        self.correct_lam = bool(correct_lam)

    def describe(self) -> dict[str, Any]:
        """Every setting that changes the mixed images (hashed into logit caches). Label smoothing only changes the
        targets, so it is left out."""
        return {"algorithm": MIX_ALGORITHM, "mixup_alpha": self.mixup_alpha, "cutmix_alpha": self.cutmix_alpha,
                "prob": self.prob, "switch_prob": self.switch_prob,
                "cutmix_minmax": list(self.cutmix_minmax) if self.cutmix_minmax else None,
                "correct_lam": self.correct_lam}

    # ------------------------------------------------------------------------------------------------------------
    # the random choices

    def plan(self, seeds: torch.Tensor | Sequence[int], image_size: tuple[int, int]) -> MixPlan:
        """Draw every sample's decisions from its own seed.

        Args:
            seeds: (B,) augmentation seeds of the batch, in batch order.
            image_size: (H, W) of the images.
        Returns:
            the `MixPlan`; a function of (seeds, their order, B, H, W) only.
        """
        seed_list = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
        batch = len(seed_list)
        partner = torch.arange(batch, dtype=torch.int64)
        lam = torch.ones(batch, dtype=torch.float32)
        cutmix = torch.zeros(batch, dtype=torch.bool)
        boxes = torch.zeros(batch, 4, dtype=torch.int64)
        if batch < 2:  # nothing to mix with
            return MixPlan(partner, lam, cutmix, boxes)
        with _numpy_global_state():
            for i, seed in enumerate(seed_list):
                np.random.seed(mix_seed(seed))
                apply = np.random.rand() < self.prob
                if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                    use_cutmix = np.random.rand() < self.switch_prob
                else:
                    use_cutmix = self.cutmix_alpha > 0
                alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
                lam_i = float(np.random.beta(alpha, alpha))
                offset = int(np.random.randint(batch - 1))
                if not apply:
                    continue
                partner[i] = (i + 1 + offset) % batch
                if use_cutmix:
                    (y_low, y_high, x_low, x_high), lam_i = cutmix_bbox_and_lam(
                        image_size, lam_i, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam)
                    boxes[i] = torch.tensor([int(y_low), int(y_high), int(x_low), int(x_high)])
                    cutmix[i] = True
                lam[i] = float(lam_i)
        return MixPlan(partner, lam, cutmix, boxes)

    # ------------------------------------------------------------------------------------------------------------
    # applying a plan

    @staticmethod
    def mix_images(images: torch.Tensor, plan: MixPlan) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H, W) mixed per `plan`, on the images' device and dtype (the input is unchanged).

        Mixup rows are `x[i] * lam + x[p] * (1 - lam)` with lam cast to the image dtype: separately rounded
        multiplies and an add, so the result is bitwise the same on CPU and CUDA.
        """
        mixed = images.clone()
        mixup_rows = torch.nonzero(plan.mixed & ~plan.cutmix).flatten()
        if mixup_rows.numel():
            lam = plan.lam[mixup_rows].to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)  # (M, 1, 1, 1)
            rows = mixup_rows.to(images.device)
            partners = plan.partner[mixup_rows].to(images.device)
            mixed[rows] = images[rows] * lam + images[partners] * (1 - lam)
        for i in torch.nonzero(plan.mixed & plan.cutmix).flatten().tolist():
            y_low, y_high, x_low, x_high = plan.boxes[i].tolist()
            mixed[i, :, y_low:y_high, x_low:x_high] = images[int(plan.partner[i]), :, y_low:y_high, x_low:x_high]
        return mixed

    def mix_targets(self, labels: torch.Tensor, plan: MixPlan) -> torch.Tensor:
        """(B,) integer labels -> (B, C) float32 soft targets: lam * smooth(y_i) + (1 - lam) * smooth(y_partner)."""
        off_value = self.label_smoothing / self.num_classes
        on_value = 1.0 - self.label_smoothing + off_value
        smoothed = one_hot(labels, self.num_classes, on_value=on_value, off_value=off_value)  # (B, C)
        lam = plan.lam.to(smoothed.device).unsqueeze(1)  # (B, 1)
        return smoothed * lam + smoothed[plan.partner.to(smoothed.device)] * (1 - lam)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, seeds: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch: images (B, 3, H, W), labels (B,), seeds (B,) -> (images (B, 3, H, W), targets (B, C))."""
        if not (images.shape[0] == labels.shape[0] == len(seeds)):
            raise ValueError(f"images, labels and seeds must have the same batch size; got {images.shape[0]}, "
                             f"{labels.shape[0]} and {len(seeds)}")
        plan = self.plan(seeds, (images.shape[-2], images.shape[-1]))
        return self.mix_images(images, plan), self.mix_targets(labels, plan)


def build_mixup(cfg: DataConfig, num_classes: int) -> Optional[SeededMixup]:
    """The recipe's Mixup/CutMix (`data.mixup`, `data.cutmix` alphas, `data.mixup_prob`, `data.mixup_switch_prob`,
    `data.label_smoothing`), or None when both alphas are 0. Used by training and by `vitkd cache-logits` alike."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    try:
        return SeededMixup(num_classes, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                           switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing)
    except ValueError as error:
        raise ConfigError(f"data.mixup/cutmix settings: {error}") from None
