"""Registries that cannot be broken from outside (issue 27, point 5): a clash is refused without replace=True
and wins cleanly with it (unregistering brings the built-in back); names the command line cannot express are
refused; what a registered method or adapter factory returns is checked, in one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_model, random_ids

import spantrace
from spantrace.architectures.llama import LlamaStyleAdapter
from spantrace.methods.base import AttributionMethod, SinkScores
from spantrace.methods.ifr import TokenwiseIFR

ROOT = Path(__file__).parents[1]


def method_class(name: str, scores=lambda run: torch.ones(run.num_tokens)) -> type[AttributionMethod]:
    """A method named ``name`` whose score() returns SinkScores(scores(run))."""

    class Made(AttributionMethod):
        description = "a test method"

        def score(self, run, sinks, sink_weights, *, chunk_size):
            return SinkScores(scores=scores(run))

    Made.name = name
    return Made


@pytest.fixture(scope="module")
def run() -> spantrace.Run:
    model = spantrace.Model(make_tiny_model("llama"), None, "tiny-llama", check=False)
    return model.run(input_ids=random_ids(12), prompt_length=8, progress=False)


def test_a_clash_is_refused_without_replace_and_wins_cleanly_with_it(run) -> None:
    builtin = run.trace((8, 12), method="ifr").scores
    mine = method_class("ifr")
    with pytest.raises(spantrace.RegistryError, match=r"already registered as 'ifr' \(spantrace\.methods\.ifr\.") as e:
        spantrace.register_method(mine)
    assert "\n" not in str(e.value) and "replace=True" in str(e.value)
    spantrace.register_method(mine, replace=True)
    try:
        assert "ifr" in spantrace.list_methods() and spantrace.available_methods()["ifr"] == "a test method"
        assert (run.trace((8, 12), method="ifr", hops=0).hop_scores[0] == 1).all()  # the user's scores
    finally:
        assert spantrace.unregister_method("ifr") is mine
    assert spantrace.available_methods()["ifr"] == TokenwiseIFR.description  # the built-in is back
    assert (run.trace((8, 12), method="ifr").scores == builtin).all()


def test_unregistering_a_new_method_removes_it_and_an_unknown_name_is_one_line() -> None:
    spantrace.register_method(method_class("test-mine"))
    assert "test-mine" in spantrace.list_methods()
    spantrace.unregister_method("test-mine")
    assert "test-mine" not in spantrace.list_methods()
    with pytest.raises(spantrace.RegistryError, match="no method is registered as 'test-mine'"):
        spantrace.unregister_method("test-mine")


def test_a_first_import_of_the_registry_sees_the_built_ins_before_a_users_registration() -> None:
    """The issue's case: registering a built-in's name first thing, in a fresh process."""
    code = (
        "from spantrace.methods.registry import register_method, list_methods\n"
        "from spantrace.methods.base import AttributionMethod\n"
        "class Mine(AttributionMethod):\n"
        "    name = 'ifr'\n"
        "    description = 'mine'\n"
        "    def score(self, run, sinks, sink_weights, *, chunk_size): ...\n"
        "try:\n"
        "    register_method(Mine)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__)\n"
        "register_method(Mine, replace=True)\n"
        "import spantrace\n"
        "print(len(spantrace.list_methods()), spantrace.available_methods()['ifr'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
        check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["RegistryError", f"{len(spantrace.list_methods())} mine"]


@pytest.mark.parametrize("name", ["a,b", "two words", "tab\tname", "", " ifr", "all", "ALL", "random", "ümlaut", "-x"])
def test_names_the_command_line_cannot_express_are_refused(name: str) -> None:
    with pytest.raises(spantrace.RegistryError) as raised:
        spantrace.register_method(method_class(name))
    assert "\n" not in str(raised.value)
    assert name not in spantrace.list_methods()


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (lambda run: [1.0] * run.num_tokens, "returned scores of type list; they must be a tensor"),
        (lambda run: torch.ones(run.num_tokens, 2), r"shape \(12, 2\); they must be 1-D, one per token \(12\)"),
        (lambda run: torch.ones(run.num_tokens - 1), r"shape \(11,\); they must be 1-D, one per token \(12\)"),
        (lambda run: torch.ones(run.num_tokens, dtype=torch.long), "torch.int64 scores; they must be floating point"),
        (lambda run: torch.ones(run.num_tokens, device="meta"), "scores on meta; move them to the CPU"),
    ],
)
def test_a_registered_methods_output_is_checked_with_its_class_named(run, scores, message: str) -> None:
    spantrace.register_method(method_class("test-wrong", scores))
    try:
        with pytest.raises(spantrace.RegistryError, match=message) as raised:
            run.trace((8, 12), method="test-wrong")
        assert "test_registries.method_class.<locals>.Made.score" in str(raised.value)
        assert "\n" not in str(raised.value)
    finally:
        spantrace.unregister_method("test-wrong")


def test_a_method_returning_something_else_than_sink_scores_is_named(run) -> None:
    class Bare(AttributionMethod):
        name = "test-bare"
        description = "returns the tensor itself"

        def score(self, run, sinks, sink_weights, *, chunk_size):
            return torch.ones(run.num_tokens)

    spantrace.register_method(Bare)
    try:
        with pytest.raises(spantrace.RegistryError, match=r"Bare\.score must return a SinkScores; it returned Tensor"):
            run.trace((8, 12), method="test-bare")
    finally:
        spantrace.unregister_method("test-bare")


def none_factory(model):
    return None


@pytest.mark.parametrize(
    ("factory", "got"),
    [(none_factory, "returned None"), (lambda model: object(), "returned a object without name, base_model")],
)
def test_an_adapter_factory_returning_a_non_adapter_is_named(factory, got: str) -> None:
    spantrace.register_adapter("llama", factory, replace=True)
    try:
        with pytest.raises(spantrace.RegistryError, match=f"the adapter factory .* registered for 'llama' {got}"):
            spantrace.Model(make_tiny_model("llama"), None, "tiny", check=False)
    finally:
        assert spantrace.unregister_adapter("llama") is factory
    assert spantrace.Model(make_tiny_model("llama"), None, "tiny").adapter.name  # the built-in is back


def test_an_adapter_clash_is_refused_without_replace() -> None:
    with pytest.raises(spantrace.RegistryError, match=r"already registered for 'llama' \(spantrace\.architectures"):
        spantrace.register_adapter("llama", LlamaStyleAdapter.__new__)
    spantrace.register_adapter("test_type", LlamaStyleAdapter)
    assert "test_type" in spantrace.supported_architectures()
    spantrace.unregister_adapter("test_type")
    assert "test_type" not in spantrace.supported_architectures()
