"""`train.compile`: the trained module runs under torch.compile and trains exactly as the eager module does."""

import pytest
import torch
import torch._dynamo

from vitkd.config import load_recipe
from vitkd.errors import ConfigError
from vitkd.training import build_trainer

COMPILED_GRAPHS = []


def _counting_backend(graph_module, example_inputs):
    """A torch.compile backend that records each graph dynamo hands it and runs it as captured."""
    COMPILED_GRAPHS.append(graph_module)
    return graph_module.forward


torch._dynamo.register_backend(_counting_backend, name="vitkd_counting_test_backend")


def _weights_after_two_steps(tiny_recipe, name, **train):
    raw = tiny_recipe(name=name)
    raw["train"].update(epochs=1, max_steps_per_epoch=2, **train)
    trainer = build_trainer(load_recipe(raw=raw))
    trainer.train_one_epoch(0)
    return trainer, {key: value.clone() for key, value in trainer.task.model.state_dict().items()}


def test_compiled_training_runs_through_dynamo_and_matches_eager_weights(tiny_recipe):
    torch._dynamo.reset()
    COMPILED_GRAPHS.clear()
    _, eager = _weights_after_two_steps(tiny_recipe, "eager")
    trainer, compiled = _weights_after_two_steps(tiny_recipe, "compiled", compile="default",
                                                 compile_backend="vitkd_counting_test_backend")
    assert isinstance(trainer.trained_module, torch._dynamo.eval_frame.OptimizedModule)
    assert COMPILED_GRAPHS, "torch.compile never received a graph: the step did not run the compiled module"
    for key in eager:
        assert torch.equal(eager[key], compiled[key]), key  # the captured graph runs the same ops


def test_unknown_compile_backend_is_refused_naming_the_valid_ones(tiny_recipe):
    raw = tiny_recipe()
    raw["train"].update(compile="default", compile_backend="inductr")
    with pytest.raises(ConfigError, match=r"train\.compile_backend: .*'inductr'.*inductor"):
        load_recipe(raw=raw)


def test_unknown_compile_mode_is_refused(tiny_recipe):
    raw = tiny_recipe()
    raw["train"].update(compile="fast")
    with pytest.raises(ConfigError, match=r"train\.compile"):
        load_recipe(raw=raw)
