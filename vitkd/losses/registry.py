"""Registry of loss terms by recipe name. Adding a method = one `LossTerm` subclass + `@register_loss_term`.

A recipe names a term by its registered name (`name: kd`) or, for terms that live outside vitkd, by import path
(`name: mypkg.losses:MyTerm`, a `LossTerm` subclass); both are validated the same way before any model is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Callable, Sequence

from vitkd.config import LossTermConfig
from vitkd.errors import ConfigError
from vitkd.losses.base import LossTerm, TermContext

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
    """The term class of a recipe name: a registered name, or `module.path:ClassName` of a `LossTerm` subclass."""
    if ":" in name:
        return _import_term(name, path)
    _import_builtin_terms()
    if name not in LOSS_TERMS:
        close = difflib.get_close_matches(name, list(LOSS_TERMS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{path}.name: unknown loss '{name}'{hint}; valid losses: {', '.join(sorted(LOSS_TERMS))}, "
                          f"or an import path module:Class of a LossTerm subclass")
    return LOSS_TERMS[name]


def _import_term(name: str, path: str) -> type[LossTerm]:
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{path}.name: cannot import module '{module_name}' of loss '{name}': {error}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
        raise ConfigError(f"{path}.name: '{name}' is not a LossTerm subclass (module '{module_name}' "
                          f"{'has no attribute ' + repr(class_name) if cls is None else 'defines it as ' + repr(cls)})")
    if not cls.registry_name:
        cls.registry_name = name
    return cls


def resolve_loss_terms(terms: Sequence[LossTermConfig]) -> list[LossTermConfig]:
    """Check every term's name and parameters; return the terms with default weights filled in.

    A term's weight defaults to its paper value. The ground-truth term (`is_ground_truth`, i.e. `ce`) defaults to
    `1 - sum(weights)` of the convex distillation terms present (DeiT mixes them convexly), else 1.
    """
    classes = []
    for index, term in enumerate(terms):
        path = f"losses.{index}"
        cls = get_loss_term_class(term.name, path)
        try:
            cls.check_params(term.params, path)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        classes.append(cls)
    weights = [term.weight if term.weight is not None or cls.is_ground_truth else cls.default_weight(term.params)
               for term, cls in zip(terms, classes)]
    convex_total = sum(weight for weight, cls in zip(weights, classes) if cls.convex_with_ground_truth)
    resolved = []
    for index, (term, cls, weight) in enumerate(zip(terms, classes, weights)):
        if weight is None:  # a ground-truth term without a weight
            weight = 1.0 - convex_total if convex_total else 1.0
        if weight < 0:
            raise ConfigError(f"losses.{index}.weight must be >= 0, got {weight}")
        resolved.append(dataclasses.replace(term, weight=float(weight)))
    return resolved


def build_loss_terms(terms: Sequence[LossTermConfig], context: TermContext) -> list[tuple[str, float, LossTerm]]:
    """Instantiate resolved terms as (log name, weight, module); log names are unique (kd, kd_1, ...)."""
    built = []
    seen: dict[str, int] = {}
    for index, term in enumerate(terms):
        if term.weight is None:
            raise ValueError(f"losses.{index} ({term.name}) has no weight: pass the terms through "
                             "resolve_loss_terms first")
        cls = get_loss_term_class(term.name, f"losses.{index}")
        count = seen.get(term.name, 0)
        seen[term.name] = count + 1
        log_name = term.name if count == 0 else f"{term.name}_{count}"
        try:
            module = cls(context, **term.params)
        except ValueError as error:
            raise ConfigError(f"losses.{index} ({term.name}): {error}") from None
        built.append((log_name, float(term.weight), module))
    return built


def _import_builtin_terms() -> None:
    """Importing the term modules registers them."""
    import vitkd.losses.embedding_terms  # noqa: F401
    import vitkd.losses.feature_terms  # noqa: F401
    import vitkd.losses.hint_terms  # noqa: F401
    import vitkd.losses.logit_terms  # noqa: F401
