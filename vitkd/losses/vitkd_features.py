"""ViTKD feature distillation (Yang et al. 2022, "ViTKD: Practical Guidelines for ViT feature knowledge distillation").

Shallow blocks carry local, low-level structure the student can copy directly (mimicking); the deepest block carries
semantics the student should be able to *predict* rather than copy (generation): half of the student's deep tokens
are hidden behind a learnable mask token and a small conv block has to fill them in to match the teacher.

Only patch tokens take part: the caller strips class/distillation tokens first (``vitkd.models.taps.split_prefix``
or ``TappedOutput.patches``). Student and teacher often carry different prefix counts (a DeiT-distilled student has
2, a plain ViT teacher 1), so the loss never guesses them; it checks ``N == H * W`` and says so when that fails.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

__all__ = ["ViTKDLoss"]

_REDUCTIONS = ("sum_per_batch", "mean")


class ViTKDLoss(nn.Module):
    """ViTKD loss: MSE mimicking of the shallow blocks plus masked generation of the deep block.

    Inputs to ``forward`` (patch tokens only, prefix tokens removed):

    * ``student_feats``: ``num_mimic_layers + 1`` tensors ``(B, N, student_dim)``: the mimic blocks (paper: blocks
      0 and 1, raw block outputs), then the deep block (paper: the last block *after the final norm*).
    * ``teacher_feats``: the same number of ``(B, N, teacher_dim)`` tensors from the matching teacher blocks. They are
      detached; no gradient reaches the teacher.

    ``N`` must equal ``H * W`` of ``grid_size`` (student and teacher on the same token grid; resample with
    ``vitkd.models.layer_mapping.align_token_grid`` otherwise).

    Terms (``P_l`` per-layer ``Linear(student_dim -> teacher_dim)``, identity when the widths agree; ``G`` the
    generation block ``Conv3x3 -> ReLU -> Conv3x3`` on the ``(B, teacher_dim, H, W)`` grid; ``M`` the boolean
    ``(B, N)`` mask with exactly ``ceil(mask_ratio * N)`` masked tokens per sample; ``lambda = mask_ratio``):

    * ``reduction="sum_per_batch"`` (default, as the paper's released code; the default weights assume it):
      ``mimic = alpha * sum_l sum_{b,n,d} (P_l(s_l) - t_l)^2 / B`` and
      ``generation = beta * sum_{b,n,d} M_{b,n} (G(masked(P(s_deep))) - t_deep)^2 / (B * lambda)``.
      The ``/ lambda`` follows the released code: it rescales the masked sum to the size of a full-grid sum.
      Both are per-batch normalised: they grow with ``N`` and the teacher width.
    * ``reduction="mean"``: per-element means. ``mimic = alpha * sum_l mean_{b,n,d}(...)`` and
      ``generation = beta * mean over the masked (b, n) and all d``. The same loss as the default is obtained with
      ``alpha_mean = alpha * N * teacher_dim`` and ``beta_mean = beta * ceil(lambda * N) * teacher_dim / lambda``
      (``= beta * N * teacher_dim`` when ``lambda * N`` is whole), e.g. DeiT-B teacher, 196 tokens:
      ``alpha = 3e-5 -> 4.52``, ``beta = 3e-6 -> 0.452``.

    Errors are computed in float32 whatever the autocast dtype.

    Returns:
        Scalar tensor ``mimic + generation``. After each call ``last_terms`` holds the two weighted terms, detached,
        under ``"mimic"`` and ``"generation"`` (they sum to the returned value), and ``last_mask`` the ``(B, N)``
        boolean mask used (``True`` = masked and generated).

    Trainable state (optimise it with the student; it is not part of the exported student): ``mimic_projections``,
    ``generation_projection``, ``mask_token`` and ``generation_block``. Masks come from the module's own
    ``torch.Generator`` (seeded by ``seed``; the global RNG is untouched) whose state is saved in ``state_dict``,
    so a resumed run draws the same masks as an uninterrupted one.
    """

    def __init__(self, student_dim: int | Sequence[int], teacher_dim: int | Sequence[int], num_mimic_layers: int = 2,
                 grid_size: tuple[int, int] | None = None, mask_ratio: float = 0.5, alpha: float = 3e-5,
                 beta: float = 3e-6, reduction: str = "sum_per_batch", seed: int = 0) -> None:
        """
        Args:
            student_dim: student token width ``Ds``, or one width per feature map (``num_mimic_layers + 1``
                entries: the mimic layers, then the deep layer) when they differ, e.g. hooked CNN stages.
            teacher_dim: teacher token width ``Dt``, or one per feature map as for ``student_dim``. The mask token
                and the generation block work at the deep layer's teacher width.
            num_mimic_layers: number of shallow blocks mimicked (paper: 2).
            grid_size: ``(H, W)`` patch grid; ``None`` infers a square grid from ``N`` at each call.
            mask_ratio: ``lambda`` in ``(0, 1]``, the fraction of deep tokens masked per sample (paper: 0.5).
            alpha: weight of the mimicking term (paper: 3e-5 with ``sum_per_batch``).
            beta: weight of the generation term (paper: 3e-6 with ``sum_per_batch``).
            reduction: ``"sum_per_batch"`` or ``"mean"``; see the class docstring for how their scales relate.
            seed: seed of the mask generator.
        """
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"ViTKDLoss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if not 0.0 < mask_ratio <= 1.0:
            raise ValueError(f"ViTKDLoss: mask_ratio must be in (0, 1], got {mask_ratio}")
        if num_mimic_layers < 0:
            raise ValueError(f"ViTKDLoss: num_mimic_layers must be >= 0, got {num_mimic_layers}")
        if grid_size is not None and (len(grid_size) != 2 or min(grid_size) <= 0):
            raise ValueError(f"ViTKDLoss: grid_size must be (H, W) with positive sides, got {grid_size}")
        self.student_dims = _per_layer(student_dim, num_mimic_layers + 1, "student_dim")
        self.teacher_dims = _per_layer(teacher_dim, num_mimic_layers + 1, "teacher_dim")
        # the deep layer's widths: what the mask token and generation block work at
        self.student_dim, self.teacher_dim = self.student_dims[-1], self.teacher_dims[-1]
        self.num_mimic_layers = num_mimic_layers
        self.grid_size = tuple(grid_size) if grid_size is not None else None
        self.mask_ratio, self.alpha, self.beta, self.reduction = mask_ratio, alpha, beta, reduction

        def projection(position: int) -> nn.Module:
            s_dim, t_dim = self.student_dims[position], self.teacher_dims[position]
            return nn.Linear(s_dim, t_dim) if s_dim != t_dim else nn.Identity()

        self.mimic_projections = nn.ModuleList([projection(position) for position in range(num_mimic_layers)])
        self.generation_projection = projection(num_mimic_layers)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.teacher_dim))
        self.generation_block = nn.Sequential(
            nn.Conv2d(self.teacher_dim, self.teacher_dim, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(self.teacher_dim, self.teacher_dim, kernel_size=3, padding=1),
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.last_terms: dict[str, torch.Tensor] = {}
        self.last_mask: torch.Tensor | None = None

    def num_masked(self, num_tokens: int) -> int:
        """Tokens masked per sample: ``ceil(mask_ratio * num_tokens)`` (as the released code), at least 1."""
        # the epsilon keeps e.g. 0.3 * 10 = 3.0000000000000004 from rounding up to 4
        return min(num_tokens, max(1, math.ceil(self.mask_ratio * num_tokens - 1e-9)))

    def sample_mask(self, batch_size: int, num_tokens: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Draw a ``(B, N)`` boolean mask with exactly ``num_masked(N)`` ``True`` entries per row from the module's
        generator (drawn on the CPU, then moved, so CPU and CUDA runs mask the same tokens)."""
        noise = torch.rand(batch_size, num_tokens, generator=self.generator)  # (B, N)
        masked_ids = noise.argsort(dim=1)[:, :self.num_masked(num_tokens)]  # (B, M)
        mask = torch.zeros(batch_size, num_tokens, dtype=torch.bool).scatter_(1, masked_ids, True)
        return mask.to(device, non_blocking=True)

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        expected = self.num_mimic_layers + 1
        if len(student_feats) != expected or len(teacher_feats) != expected:
            raise ValueError(
                f"ViTKDLoss expects {expected} student and teacher feature maps ({self.num_mimic_layers} mimic layers "
                f"then the deep layer), got {len(student_feats)} student and {len(teacher_feats)} teacher")
        for position, (s, t) in enumerate(zip(student_feats, teacher_feats)):
            self._check_pair(position, s, t)
        B, N, _ = student_feats[0].shape
        H, W = self._grid(N)

        mimic = student_feats[0].new_zeros((), dtype=torch.float32)
        for projection, s, t in zip(self.mimic_projections, student_feats[:-1], teacher_feats[:-1]):
            error = (projection(s).float() - t.detach().float()).pow(2)  # (B, N, Dt)
            mimic = mimic + (error.sum() / B if self.reduction == "sum_per_batch" else error.mean())
        mimic = self.alpha * mimic

        s_deep, t_deep = student_feats[-1], teacher_feats[-1].detach()
        x = self.generation_projection(s_deep)  # (B, N, Dt)
        mask = self.sample_mask(B, N, x.device)  # (B, N)
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)  # masked slots -> mask token
        x = rearrange(x, "b (h w) d -> b d h w", h=H, w=W)  # (B, Dt, H, W)
        generated = rearrange(self.generation_block(x), "b d h w -> b (h w) d")  # (B, N, Dt)
        error = (generated.float() - t_deep.float()).pow(2).sum(dim=-1)  # (B, N)
        masked_error = (error * mask).sum()
        if self.reduction == "sum_per_batch":
            generation = masked_error / (B * self.mask_ratio)
        else:
            generation = masked_error / (B * self.num_masked(N) * self.teacher_dim)
        generation = self.beta * generation

        self.last_terms = {"mimic": mimic.detach(), "generation": generation.detach()}
        self.last_mask = mask
        return mimic + generation

    def _check_pair(self, position: int, s: torch.Tensor, t: torch.Tensor) -> None:
        role = "deep layer" if position == self.num_mimic_layers else f"mimic layer {position}"
        if s.dim() != 3 or t.dim() != 3:
            raise ValueError(f"ViTKDLoss ({role}): expected (B, N, D) tokens, got student {tuple(s.shape)} "
                             f"and teacher {tuple(t.shape)}")
        if s.shape[:2] != t.shape[:2]:
            raise ValueError(
                f"ViTKDLoss ({role}): student {tuple(s.shape)} and teacher {tuple(t.shape)} differ in batch or token "
                f"count; strip prefix tokens (split_prefix) and align token grids (align_token_grid) first")
        s_dim, t_dim = self.student_dims[position], self.teacher_dims[position]
        if s.shape[-1] != s_dim or t.shape[-1] != t_dim:
            raise ValueError(
                f"ViTKDLoss ({role}): widths student {s.shape[-1]} / teacher {t.shape[-1]} do not match the "
                f"configured student_dim={s_dim} / teacher_dim={t_dim}")

    def _grid(self, num_tokens: int) -> tuple[int, int]:
        if self.grid_size is not None:
            H, W = self.grid_size
        else:
            H = W = math.isqrt(num_tokens)
        if H * W != num_tokens:
            grid = self.grid_size or "a square grid"
            raise ValueError(
                f"ViTKDLoss: {num_tokens} tokens do not fill {grid}; pass patch tokens only (class/distillation "
                f"tokens removed, e.g. vitkd.models.taps.split_prefix) and set grid_size=(H, W) for non-square grids")
        return H, W

    def get_extra_state(self) -> dict:
        return {"generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator_state"])

    def extra_repr(self) -> str:
        def widths(dims: list[int]) -> int | list[int]:
            return dims[0] if len(set(dims)) == 1 else dims

        return (f"student_dim={widths(self.student_dims)}, teacher_dim={widths(self.teacher_dims)}, "
                f"num_mimic_layers={self.num_mimic_layers}, grid_size={self.grid_size}, mask_ratio={self.mask_ratio}, "
                f"alpha={self.alpha}, beta={self.beta}, reduction={self.reduction!r}")


def _per_layer(width: int | Sequence[int], count: int, name: str) -> list[int]:
    """One width per feature map: an int is repeated, a sequence must have ``count`` positive entries."""
    widths = [width] * count if isinstance(width, int) else list(width)
    if len(widths) != count or any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in widths):
        raise ValueError(f"ViTKDLoss: {name} must be a positive int or {count} positive ints (the mimic layers, "
                         f"then the deep layer), got {width!r}")
    return widths
