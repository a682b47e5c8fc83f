"""Registry of loss terms by recipe name. Adding a method = one `LossTerm` subclass + `@register_loss_term`."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Callable

from vitkd.losses.base import LossTerm, TermContext

if TYPE_CHECKING:
    from vitkd.config import Recipe

LOSS_TERMS: dict[str, type[LossTerm]] = {}


def register_loss_term(name: str) -> Callable[[type[LossTerm]], type[LossTerm]]:
    def decorator(cls: type[LossTerm]) -> type[LossTerm]:
        if name in LOSS_TERMS:
            raise ValueError(f"loss term '{name}' is already registered by {LOSS_TERMS[name].__name__}")
        cls.registry_name = name
        LOSS_TERMS[name] = cls
        return cls

    return decorator


def get_loss_term_class(name: str, path: str = "losses") -> type[LossTerm]:
    _import_builtin_terms()
    if name not in LOSS_TERMS:
        from vitkd.errors import ConfigError

        close = difflib.get_close_matches(name, list(LOSS_TERMS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{path}.name: unknown loss '{name}'{hint}; valid losses: {', '.join(sorted(LOSS_TERMS))}")
    return LOSS_TERMS[name]


def resolve_loss_terms(recipe: "Recipe") -> None:
    """Check every term's name and parameters and fill in default weights (in place).

    A term's weight defaults to its paper value. The ground-truth term `ce` defaults to `1 - sum(alpha)` of the DeiT
    terms present (DeiT mixes them convexly), else 1.
    """
    from vitkd.errors import ConfigError

    convex_total = 0.0
    ground_truth_terms = []
    for index, term in enumerate(recipe.losses):
        path = f"losses.{index}"
        cls = get_loss_term_class(term.name, path)
        try:
            cls.check_params(term.params, path)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if term.name == "ce":
            ground_truth_terms.append(term)
            continue
        if term.weight is None:
            term.weight = cls.default_weight(term.params)
        if cls.convex_with_ground_truth:
            convex_total += term.weight
    for term in ground_truth_terms:
        if term.weight is None:
            term.weight = 1.0 - convex_total if convex_total else 1.0
    for index, term in enumerate(recipe.losses):
        if term.weight < 0:
            raise ConfigError(f"losses.{index}.weight must be >= 0, got {term.weight}")


def build_loss_terms(recipe: "Recipe", context: TermContext) -> list[tuple[str, float, LossTerm]]:
    """Instantiate the recipe's terms as (log name, weight, module); log names are unique (kd, kd_1, ...)."""
    built = []
    seen: dict[str, int] = {}
    for index, term in enumerate(recipe.losses):
        cls = get_loss_term_class(term.name, f"losses.{index}")
        count = seen.get(term.name, 0)
        seen[term.name] = count + 1
        log_name = term.name if count == 0 else f"{term.name}_{count}"
        try:
            module = cls(context, **term.params)
        except ValueError as error:
            from vitkd.errors import ConfigError

            raise ConfigError(f"losses.{index} ({term.name}): {error}") from None
        built.append((log_name, float(term.weight), module))
    return built


def _import_builtin_terms() -> None:
    """Importing the term modules registers them."""
    import vitkd.losses.feature_terms  # noqa: F401
    import vitkd.losses.logit_terms  # noqa: F401
