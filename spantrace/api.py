"""The public entry points: ``load`` a model, ``Model.run`` a prompt once, ``Run.trace`` any span."""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .architectures.registry import adapter_for, text_causal_lm
from .capture import Capture, capture_residuals, check_store_dtype, input_model
from .context_length import check_length, context_limit, room_to_generate
from .contract import ArchitectureAdapter
from .errors import InputError, NonFiniteError, SpanTraceError
from .inputs import Prepared, complete_layout, prepare
from .layers.softmax import KeyValueCache
from .memory import MemoryPlan, planned_capture
from .methods.hops import MAX_HOPS, RECURSIVE_SPANS, trace_hops
from .methods.registry import get_method
from .offload import check_weights, execution_device
from .result import TraceResult
from .selfcheck import SelfCheck, self_check
from .spans import check_span, resolve_span, turn_start
from .text.layout import Layout, layout_from_tokens
from .text.tokens import is_special, is_stop_token, special_ids, token_strings
from .version import __version__

DEFAULT_CHUNK_SIZE = 128

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def whole_number(
    value: Any, name: str, *, low: int = 1, high: int | None = None, error: type[SpanTraceError] = SpanTraceError
) -> int:
    """``value`` as a Python int in ``low..high`` (NumPy integers accepted; bools, floats and strings refused);
    ``error`` with one line naming ``name`` otherwise."""
    bound = f"{low}..{high}" if high is not None else f"≥ {low}"
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise error(f"{name} must be a whole number {bound}; got {value!r}")
    number = value.__index__()  # a NumPy integer as a Python int
    if number < low or (high is not None and number > high):
        raise error(f"{name} must be a whole number {bound}; got {number}")
    return number


class Model:
    """A causal LM with its tokenizer and the adapter that knows its internals."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: Any | None = None, model_id: str | None = None, *, check: bool = True,
        processor: Any | None = None,
    ) -> None:
        """``check=False`` skips the load-time self-check (``spantrace.selfcheck``): only for a model
        whose adapter you have verified otherwise, since an unchecked adapter may give scores that are not
        the model's. ``processor``: a vision-language model's processor, which reads the images of ``messages``."""
        self.hf_model = text_causal_lm(model).eval()
        if tokenizer is None and processor is not None:  # a processor carries its model's tokenizer
            tokenizer = getattr(processor, "tokenizer", None)
        self.tokenizer = tokenizer
        self.processor = processor
        self.model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
        check_weights(self.hf_model)  # no quantised weight, no meta weight without an accelerate hook to load it
        self.adapter: ArchitectureAdapter = adapter_for(self.hf_model)
        self.context_limit = context_limit(self.hf_model)  # the trained context length, from the config
        self.self_check: SelfCheck | None = None
        if check:
            vocab_size = self.hf_model.get_input_embeddings().num_embeddings
            self.self_check = self_check(
                self.adapter, vocab_size, next(self.hf_model.parameters()).dtype, model=self.hf_model
            )

    def __repr__(self) -> str:
        return f"Model({self.model_id!r}, architecture={self.adapter.name!r})"

    @property
    def device(self) -> torch.device:
        """Where the model reads its input ids (a dispatched model's first layer's execution device)."""
        return execution_device(self.hf_model.get_input_embeddings()) or torch.device("cpu")

    # tokenisation ----------------------------------------------------------------------------------
    def _require_tokenizer(self, what: str) -> Any:
        if self.tokenizer is None:
            raise InputError(
                f"{what} needs a tokenizer; pass `tokenizer=` to spantrace.load, or give `input_ids=` "
                "and `prompt_length=` instead of text"
            )
        return self.tokenizer

    def encode_prompt(self, prompt: str, *, chat: bool = True) -> list[int]:
        """Token ids of ``prompt``, wrapped in the chat template when asked and available."""
        tokenizer = self._require_tokenizer("a text prompt")
        return prepare(tokenizer, prompt=prompt, chat=chat).ids

    def encode_output(self, output: str) -> list[int]:
        tokenizer = self._require_tokenizer("a text output")
        if not isinstance(output, str) or not output:
            raise InputError("the output is empty; give the generated text, or leave it out to generate")
        return list(tokenizer(output, add_special_tokens=False)["input_ids"])

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each token's text (rule: ``spantrace.text.tokens.token_strings``)."""
        return token_strings(self.tokenizer, ids)

    # running ---------------------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int = 256,
        progress: bool = True,
        model_inputs: dict[str, torch.Tensor] | None = None,
    ) -> list[int]:
        """Greedy continuation of ``prompt_ids`` (stops at EOS), with a progress bar; ``model_inputs`` (images)
        go to the model as given. NonFiniteError (saying where) when the model's forward goes non-finite."""
        from .generation import NonFiniteLogitsError, greedy_generate

        try:
            return greedy_generate(
                self.hf_model, list(prompt_ids), max_new_tokens=max_new_tokens, progress=progress,
                model_inputs=model_inputs,
            )
        except NonFiniteLogitsError as error:  # one forward over what it read says which layer (or: the head)
            extra = self._completed(error.ids, dict(model_inputs or {}))  # per-token inputs cover the new tokens
            capture_residuals(self.adapter, torch.tensor(error.ids, dtype=torch.long), model_inputs=extra or None)
            raise NonFiniteError(f"{error} (the layers were finite: the output head's weights?)") from None

    def prepare(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[str | Mapping[str, Any]] | None = None,
        documents_message: int | None = None,
        output: str | None = None,
        chat: bool = True,
        allow_long: bool = False,
    ) -> Prepared:
        """The first step of ``run``: the prompt or conversation (with its documents and tools) rendered,
        tokenised and checked, and the output when given or traced as given (``output_ids`` None: generate it).

        The arguments are ``run``'s; ``run(prepared=...)`` then generates (when needed) and captures. Between
        the two, ``prepared.ids`` are the context's token ids and ``prepared.output_ids`` the given output's."""
        if prompt is None and messages is None:
            raise InputError("nothing to prepare: give `prompt` (text) or `messages` (a chat)")
        tokenizer = self._require_tokenizer("a text prompt")
        prepared = prepare(
            tokenizer, prompt=prompt, messages=messages, tools=tools, documents=documents,
            documents_message=documents_message, output=output, chat=chat, processor=self.processor,
        )
        # longer than the trained context: refused here already, unless allow_long (run keeps the warning)
        check_length(self.context_limit, len(prepared.ids) + len(prepared.output_ids or []), allow_long=allow_long)
        return prepared

    def run(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[str | Mapping[str, Any]] | None = None,
        documents_message: int | None = None,
        output: str | None = None,
        input_ids: torch.Tensor | Sequence[int] | None = None,
        prompt_length: int | None = None,
        prepared: Prepared | None = None,
        model_inputs: Mapping[str, Any] | None = None,
        chat: bool = True,
        max_new_tokens: int = 256,
        store_dtype: torch.dtype | None = None,
        offload: bool = False,
        progress: bool = True,
        allow_long: bool = False,
        plan_memory: bool = True,
    ) -> Run:
        """One forward pass over prompt + generation, keeping the residual stream for any number of traces.

        Give either ``prompt`` (text; ``output`` text is appended, or generated greedily when None),
        or ``messages`` (a chat: ``{"role": ..., "content": ...}``, with ``tools`` for the chat template; a
        last assistant message is traced as given, else the answer is generated), or ``input_ids`` (1-D)
        with ``prompt_length`` (positions ``prompt_length…`` are the generation), or ``prepared`` (what
        ``Model.prepare`` made of the text arguments; the same as passing them). ``documents`` (strings or
        ``{"name": ..., "text": ...}``) go before the prompt or the last user message (or the user or system
        message whose index in ``messages`` is ``documents_message``, negative from the end). Layouts and rules:
        ``spantrace.inputs``; every message's and document's token range is kept in ``Run.layout``.
        ``store_dtype`` (e.g. ``torch.float16``) halves what is kept; ``offload`` keeps it on the CPU.
        An input longer than the model's trained context is refused, or traced with ``allow_long=True`` and a
        warning kept in each result's ``info["warnings"]`` (never past GPT-2-style learned positions).
        ``plan_memory`` (default on) first plans the capture's memory per device (``spantrace.memory``): where it
        does not fit, the capture goes to the CPU if that fits, else ``MemoryPlanError`` says what would.
        ``model_inputs`` (a dict of tensors, e.g. ``{"pixel_values": ..., "image_grid_thw": ...}`` for a
        vision-language model whose ``input_ids`` hold the image tokens) go as given to the model's forward in the
        capture, the generation and every method that re-runs the model (docs/vision-engine.md).
        """
        check_store_dtype(store_dtype)  # before any generation
        warnings: list[str] = []
        layout = None
        given = self._model_inputs(model_inputs)
        texts = (prompt, output, messages, documents, documents_message, tools)
        if prepared is not None:
            if any(x is not None for x in (*texts, input_ids, prompt_length)):
                raise InputError("give either `prepared` or what it is made from (text or `input_ids`), not both")
        elif input_ids is not None:
            if any(x is not None for x in texts):
                raise InputError("give either text (`prompt`, `messages`, `output`) or `input_ids`, not both")
            ids = _as_id_list(input_ids)
            if prompt_length is None:
                raise InputError("`prompt_length` is required with `input_ids` (where the generation starts)")
        elif prompt is None and messages is None:
            raise InputError("nothing to run: give `prompt` (text), `messages` (a chat) or `input_ids`")
        else:
            prepared = self.prepare(
                prompt, messages=messages, tools=tools, documents=documents, documents_message=documents_message,
                output=output, chat=chat, allow_long=allow_long,
            )
        if prepared is not None:
            tokenizer = self._require_tokenizer("a text prompt")
            if prepared.model_inputs:  # the processor's pixel values etc., made by prepare
                if given:
                    raise InputError("give images either through `prepared` or as `model_inputs`, not both")
                given = self._model_inputs(prepared.model_inputs)
            if prepared.output_ids is None:  # generation stops where the trained context ends, unless allow_long
                room = room_to_generate(self.context_limit, len(prepared.ids), max_new_tokens, allow_long=allow_long)
                generated = self.generate(
                    prepared.ids, max_new_tokens=room, progress=progress,
                    model_inputs=self._completed(prepared.ids, given) or None,
                )
                if room < max_new_tokens and len(generated) == room:
                    warnings.append(f"generation stopped after {room} tokens, where the model's context ends")
            else:
                generated = prepared.output_ids
            ids, prompt_length = prepared.ids + generated, len(prepared.ids)
            layout = complete_layout(tokenizer, prepared, generated)
        prompt_length = whole_number(prompt_length, "prompt_length", error=InputError)
        if not ids:
            raise InputError("the token sequence is empty")
        if not 0 < prompt_length <= len(ids):
            raise InputError(f"prompt_length must be in 1..{len(ids)} (the sequence length); got {prompt_length}")
        if prompt_length == len(ids):
            raise InputError(
                "there are no generated tokens to trace: the output is empty "
                "(the model may have stopped at once; raise max_new_tokens or pass `output=`)"
            )
        vocab = self.hf_model.get_input_embeddings().num_embeddings
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise InputError(f"token ids {bad[:5]} are outside the model's vocabulary of {vocab}")
        too_long = check_length(self.context_limit, len(ids), allow_long=allow_long)
        warnings += [too_long] if too_long is not None else []
        plan = None
        if plan_memory:
            plan = planned_capture(self.adapter, len(ids), store_dtype=store_dtype, offload=offload)
        offload = plan.offload if plan is not None else offload  # the plan's fallback may keep it on the CPU
        extra = self._completed(ids, given)
        started = time.perf_counter()
        capture = capture_residuals(
            self.adapter,
            torch.tensor(ids, dtype=torch.long),
            store_dtype=store_dtype,
            store_device="cpu" if offload else None,
            model_inputs=extra or None,
        )
        run = Run(self, capture, prompt_length, capture_seconds=time.perf_counter() - started, layout=layout,
                  model_inputs=extra)
        run.warnings = warnings
        run.memory_plan = plan
        return run

    def _model_inputs(self, model_inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """``model_inputs`` checked: a mapping of names to tensors, for a model that takes them."""
        if model_inputs is None:
            return {}
        if not isinstance(model_inputs, Mapping) or not all(isinstance(k, str) for k in model_inputs):
            raise InputError("model_inputs must be a dict of names to tensors, e.g. {'pixel_values': tensor}")
        if model_inputs:
            input_model(self.adapter)  # a model that takes none refuses them here, before any work
        return dict(model_inputs)

    def _completed(self, ids: Sequence[int], model_inputs: dict[str, Any]) -> dict[str, Any]:
        """``model_inputs`` with what the adapter says the forward needs filled in (nothing when empty)."""
        complete = getattr(self.adapter, "complete_model_inputs", None)
        if not model_inputs or complete is None:
            return model_inputs
        return complete(torch.tensor(list(ids), dtype=torch.long), model_inputs)


class Run:
    """A captured forward pass over prompt + generation; answers any number of ``trace`` calls."""

    def __init__(
        self,
        model: Model,
        capture: Capture,
        prompt_length: int,
        *,
        capture_seconds: float = 0.0,
        layout: Layout | None = None,
        model_inputs: dict[str, Any] | None = None,
    ):
        self.model = model
        self.capture = capture
        self.prompt_length = prompt_length
        self.capture_seconds = capture_seconds
        # Keys and values per layer, recomputed once from the capture and reused by every trace.
        self.key_value_cache: KeyValueCache = {}
        self.token_ids: list[int] = [int(i) for i in capture.input_ids]
        self.tokens: list[str] = model.token_strings(self.token_ids)
        # What the model read besides the token ids (images: pixel_values, image_grid_thw, ...); empty for text.
        self.model_inputs: dict[str, Any] = dict(model_inputs or {})
        # Which characters and tokens came from which message or document, and which are template; token ids with
        # raw image inputs get an image segment each.
        self.layout: Layout = layout if layout is not None else self._token_layout()
        self.warnings: list[str] = []  # what every trace of this run must carry (an input past the context)
        # What Model.run planned for this capture's memory (None when it was not planned).
        self.memory_plan: MemoryPlan | None = None

    def _token_layout(self) -> Layout:
        """The layout of a run given token ids: their strings; with raw image inputs, an image segment each."""
        tokenizer = self.model.tokenizer
        special = special_ids(tokenizer) if tokenizer is not None else set()
        finder = getattr(self.adapter, "image_segments", None)
        images = finder(self.token_ids, self.model_inputs) if self.model_inputs and finder is not None else []
        return layout_from_tokens(
            self.tokens, [i in special or is_special(t) for i, t in zip(self.token_ids, self.tokens, strict=True)],
            images,
        )

    def _as_turn(self, start: int) -> Run:
        """This run with the generation starting at ``start`` (an earlier assistant turn); the forward pass and
        the key/value cache are shared, since neither depends on where the generation starts."""
        view = copy.copy(self)
        view.prompt_length = start
        return view

    def __repr__(self) -> str:
        return (
            f"Run({self.model.model_id!r}, tokens={self.num_tokens}, prompt_length={self.prompt_length}, "
            f"generated={self.num_tokens - self.prompt_length})"
        )

    @property
    def adapter(self) -> ArchitectureAdapter:
        return self.model.adapter

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def generated_text(self) -> str:
        if self.model.tokenizer is None:
            return " ".join(self.tokens[self.prompt_length :])
        return self.model.tokenizer.decode(self.token_ids[self.prompt_length :])

    def assistant_positions(self) -> torch.Tensor:
        """Positions of the earlier assistant turns in the context (their non-template tokens): the extra
        recursive sinks of ``recursive="assistant"``."""
        positions = [
            p
            for segment in self.layout.of_kind("message")
            if segment.role == "assistant" and segment.tokens is not None
            for p in range(*segment.tokens)
            if p < self.prompt_length and not self.layout.template[p]
        ]
        return torch.tensor(positions, dtype=torch.long)

    def stop_token_mask(self) -> torch.Tensor:
        """[N] bool: tokens made only of punctuation and whitespace."""
        return torch.tensor([is_stop_token(token) for token in self.tokens], dtype=torch.bool)

    def trace(
        self,
        span: tuple[int, int] | str,
        *,
        method: str = "flashtrace",
        hops: int = 1,
        recursive: str = "generation",
        stop_tokens: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        method_options: dict[str, Any] | None = None,
    ) -> TraceResult:
        """Score every position for the generated ``span``: ``(start, end)`` (end exclusive) or a span spec
        such as ``"answer"``, ``"sentence:-1"``, ``"regex:PATTERN"`` (all forms: ``spantrace.spans``).

        ``hops`` (0 … ``methods.hops.MAX_HOPS`` = 16) recursive hops trace the reasoning:
        ``recursive="generation"`` uses the generated
        tokens up to the span end (T ∪ O) as the recursive sinks, ``"reasoning"`` those before it (T), and
        ``"assistant"`` T ∪ O plus every earlier assistant turn of a conversation (their scores then flow on
        to what those turns read, and they get no final score themselves).
        ``stop_tokens=True`` soft-deletes punctuation/whitespace tokens: zero sink weight, zero score.
        ``chunk_size`` sinks are scored at a time (memory O(chunk · N · H)); it never changes results.
        ``method_options`` go to the method (e.g. ``{"steps": 64}`` for integrated gradients).
        """
        if not isinstance(span, (tuple, list)):
            span = resolve_span(self, span)
            turn = turn_start(self, span) if span[0] < self.prompt_length else None
            if turn is not None:  # a message:/turn:/tool_call: span in an earlier assistant turn
                return self._as_turn(turn).trace(
                    span, method=method, hops=hops, recursive=recursive, stop_tokens=stop_tokens,
                    chunk_size=chunk_size, method_options=method_options,
                )
        start, end = check_span(self, span)
        hops = whole_number(hops, "hops", low=0, high=MAX_HOPS)
        if recursive not in RECURSIVE_SPANS:
            raise SpanTraceError(f"recursive must be one of {RECURSIVE_SPANS}; got {recursive!r}")
        chunk_size = whole_number(chunk_size, "chunk_size", low=1)
        attribution = get_method(method, **(method_options or {}))
        started = time.perf_counter()
        traced = trace_hops(
            attribution,
            self,
            (start, end),
            hops=hops,
            recursive=recursive,
            stop_mask=self.stop_token_mask() if stop_tokens else None,
            chunk_size=chunk_size,
            context_sinks=self.assistant_positions() if recursive == "assistant" else None,
        )
        trace_seconds = time.perf_counter() - started
        if not bool(torch.isfinite(traced.scores).all()):  # each hop's scores were checked in methods.hops
            raise NonFiniteError(
                f"method {method!r} gave finite scores at every hop but their sum overflows: "
                "try another method, or load the model in float32"
            )
        timings = {"capture_s": self.capture_seconds, "trace_s": trace_seconds}
        timings.update({f"hop{k}_s": seconds for k, seconds in enumerate(traced.hop_seconds)})
        result = TraceResult(
            tokens=list(self.tokens),
            token_ids=list(self.token_ids),
            prompt_length=self.prompt_length,
            span=(start, end),
            method=method,
            scores=traced.scores.numpy().astype(np.float32),
            hop_scores=[h.numpy().astype(np.float32) for h in traced.hop_scores],
            rho=[float(r) for r in traced.rho],
            recursive_span=traced.recursive_span,
            timings=timings,
            info=self._info(method, hops, recursive, stop_tokens, chunk_size, method_options, traced.notes),
            rows=traced.rows.numpy().astype(np.float32) if traced.rows is not None else None,
            row_positions=[int(p) for p in traced.row_positions] if traced.row_positions is not None else None,
            layout=self.layout,
        )
        template = result.template_mask[: self.prompt_length]
        result.info["template"] = {
            "tokens": int(template.sum()),
            "score": result.template_score,
            "share": result.template_share,
        }
        return result

    def _info(self, method, hops, recursive, stop_tokens, chunk_size, method_options, notes) -> dict[str, Any]:
        import transformers

        return {
            "model": self.model.model_id,
            "architecture": self.adapter.name,
            "self_check": self.model.self_check.as_info() if self.model.self_check is not None else "skipped",
            "method": method,
            "options": {"hops": hops, "recursive": recursive, "stop_tokens": stop_tokens, "chunk_size": chunk_size},
            "method_options": dict(method_options or {}),
            "versions": {
                "spantrace": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
            "notes": list(notes),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
            "memory": self.memory_plan.as_info() if self.memory_plan is not None else "not planned",
        }


def _as_id_list(input_ids: torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2 and input_ids.shape[0] == 1:
            input_ids = input_ids[0]
        if input_ids.dim() != 1:
            raise InputError(f"input_ids must be 1-D (one sequence); got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise InputError(f"input_ids must hold integer token ids; got {input_ids.dtype}")
        return [int(i) for i in input_ids.tolist()]
    try:
        return [int(i) for i in input_ids]
    except (TypeError, ValueError) as error:
        raise InputError("input_ids must be a 1-D sequence of integer token ids") from error


def load(
    source: str | PreTrainedModel | None = None,
    *,
    tokenizer: Any | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    check: bool = True,
    processor: Any | None = None,
    device_map: str | int | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | None = None,
) -> Model:
    """Load a causal LM to trace: the built-in model (default), a hub id, a folder, a GGUF file or a model.

    A model that does not fit one device: ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"``, ``"cpu"``
    or a dict of module names to a device, ``"cpu"`` or ``"disk"``), ``max_memory`` (``{0: "20GiB", "cpu":
    "60GiB"}``) and ``offload_folder`` (for the layers on ``"disk"``) go to ``from_pretrained`` for a folder or hub
    id; a model you dispatched with accelerate yourself is taken as it is. Scores are the same as on the model held
    whole (docs/big-models.md).

    Every model is self-checked at load: a short slice of tokens runs through every layer and the adapter
    must rebuild each layer's attention output from its per-source parts, or the model is refused with
    ``UnsupportedArchitectureError`` naming the layer. ``check=False`` skips that (at your own risk).
    ``processor`` (a vision-language model's, e.g. ``AutoProcessor.from_pretrained(...)``) reads the images of
    ``messages``; a folder or hub id that holds one brings it along (docs/vision.md).
    """
    from .loading.hub import load_hf

    loaded = load_hf(
        source, tokenizer=tokenizer, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
        offload_folder=offload_folder,
    )
    processor = processor if processor is not None else loaded.processor
    return Model(loaded.model, loaded.tokenizer, loaded.model_id, check=check, processor=processor)
