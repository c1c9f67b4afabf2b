"""The client's request and result types (plain dataclasses, no protobuf in sight)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

__all__ = ["Budget", "BudgetReport", "Usage", "TopLogprob", "TokenLogprob", "GenerateResult", "StreamDelta",
           "ModelInfo", "EngineStats", "LayerRange"]

# A decoder layer, or layers (first, last) both inclusive.
LayerRange = Union[int, Tuple[int, int]]


@dataclass(frozen=True)
class Budget:
    """Per-request compute budget (ComputeBudget). The defaults are dense compute; a
    control the loaded model cannot honour answers FailedPreconditionError, and
    ModelInfo.supported_budget_controls lists those it can."""

    # GateSkip token skipping, in [0, 0.9] (models with residual gates).
    skip_ratio: float = 0.0
    # MoE top-k override, 1 .. the model's k; 0 means the model's k.
    experts_per_token: int = 0
    # Skip gated-attention heads whose mean output gate is below this floor, in [0, 1).
    attention_gate_floor: float = 0.0
    # Decoder layers to skip: (first, last) spans, both inclusive, or single layer numbers.
    skip_layers: Sequence[LayerRange] = ()


@dataclass(frozen=True)
class BudgetReport:
    """The compute a request actually skipped."""

    branches_skipped: int = 0
    branches_total: int = 0
    mean_experts_per_token: float = 0.0
    attention_heads_skipped: int = 0
    attention_heads_total: int = 0
    layers_skipped: int = 0


@dataclass(frozen=True)
class Usage:
    """What a request cost. FLOPs count a multiply-add as 2, from the shapes actually run."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    dense_flops: float = 0.0
    executed_flops: float = 0.0
    budget: BudgetReport = field(default_factory=BudgetReport)
    preemptions: int = 0


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's logprob and the top alternatives (when logprobs=N was asked)."""

    token_id: int
    logprob: float
    top: List[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class GenerateResult:
    """The result of generate(). finish_reason is "length", "stop_token" or "stop_string"."""

    text: str
    token_ids: List[int]
    finish_reason: str
    usage: Usage
    logprobs: List[TokenLogprob] = field(default_factory=list)
    request_id: str = ""


@dataclass(frozen=True)
class StreamDelta:
    """One message of stream(): the tokens and text produced since the previous one.

    The text never ends inside a UTF-8 sequence, so the deltas concatenate to the text
    generate() returns. finish_reason and usage are set on the last delta only (None on
    every other).
    """

    text: str
    token_ids: List[int]
    logprobs: List[TokenLogprob] = field(default_factory=list)
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None
    request_id: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What the daemon has loaded (GetModelInfo)."""

    model_type: str = ""
    architecture: str = ""
    vocab_size: int = 0
    hidden_size: int = 0
    num_layers: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    head_dim: int = 0
    max_model_len: int = 0
    weight_dtype: str = ""
    total_parameters: int = 0
    active_parameters: int = 0
    layer_types: List[str] = field(default_factory=list)
    num_experts: int = 0
    experts_per_token: int = 0
    supported_budget_controls: List[str] = field(default_factory=list)
    not_served: List[str] = field(default_factory=list)
    model_path: str = ""
    has_tokenizer: bool = False
    bos_token_id: int = 0
    eos_token_ids: List[int] = field(default_factory=list)
    device: str = ""
    # Load-time weight quantization ("none", "int8", "int4") and the stored format in words.
    quantization: str = ""
    weight_format: str = ""


@dataclass(frozen=True)
class EngineStats:
    """The engine's live state (GetEngineStats)."""

    running: int = 0
    waiting: int = 0
    total_kv_blocks: int = 0
    free_kv_blocks: int = 0
    total_state_slots: int = 0
    free_state_slots: int = 0
    steps: int = 0
    preemptions: int = 0
    finished: int = 0
    itl_target_ms: float = 0.0
    prefill_cap: int = 0
    # The KV cache: "f32", "bf16" or "fp8" (--kv_cache_dtype), one block's bytes, its
    # tokens, and how many sequences of the full context fit at once.
    kv_cache_dtype: str = ""
    kv_block_bytes: int = 0
    kv_block_size: int = 0
    kv_full_context_sequences: int = 0
    # Prefix caching (--enable_prefix_caching): tokens looked up and found cached at
    # admission, cached KV blocks and their evictions, and on hybrid models the
    # recurrent-state snapshots (held, capacity, bytes of one, evicted).
    prefix_caching: bool = False
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    cached_kv_blocks: int = 0
    kv_block_evictions: int = 0
    state_snapshots: int = 0
    total_state_snapshots: int = 0
    state_snapshot_bytes: int = 0
    state_snapshot_evictions: int = 0
