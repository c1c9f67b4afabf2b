"""What the sync and asyncio clients share: channel credentials, metadata, requests built
from keyword arguments, and responses turned into dataclasses."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import grpc

try:
    from ._proto.sluice.v1 import generation_pb2 as pb
    from ._proto.sluice.v1 import generation_pb2_grpc as pb_grpc
except ImportError as e:  # a source checkout that was never built
    raise ImportError(
        "sluice_client's gRPC stubs are generated from proto/ when the package is built: install it with "
        "`pip install ./clients/python` (scripts/setup-venv.sh does) instead of importing the source tree") from e

from .types import (Budget, BudgetReport, EngineStats, GenerateResult, ModelInfo, StreamDelta, TokenLogprob,
                    TopLogprob, Usage)

DEFAULT_ADDRESS = "127.0.0.1:50051"
API_KEY_ENV = "SLUICE_API_KEY"
GENERATION_SERVICE = "sluice.v1.Generation"

PemSource = Union[bytes, str, "os.PathLike[str]", None]

_FINISH_PREFIX = "FINISH_REASON_"


def read_pem(value: PemSource, what: str) -> Optional[bytes]:
    """PEM bytes as given, or the contents of the file a str / path names."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        with open(os.fspath(value), "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {value!r}: {e.strerror}") from None


class ChannelConfig:
    """Address, credentials, options and the per-call metadata of one client."""

    def __init__(self, address: str, api_key: Optional[str], tls: bool, root_certificates: PemSource,
                 client_certificate: PemSource, client_key: PemSource, timeout: Optional[float],
                 options: Sequence[Tuple[str, Any]]):
        self.address = address
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        self.api_key = api_key or None
        root = read_pem(root_certificates, "root_certificates")
        cert = read_pem(client_certificate, "client_certificate")
        key = read_pem(client_key, "client_key")
        if (cert is None) != (key is None):
            raise ValueError("client_certificate and client_key go together (mutual TLS)")
        self.tls = bool(tls or root is not None or cert is not None)
        self.credentials = (grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                                         certificate_chain=cert) if self.tls else None)
        self.timeout = timeout
        self.options = list(options)
        self.metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ())

    def deadline(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout


def _layer_span(value) -> "pb.LayerSpan":
    if isinstance(value, int):
        return pb.LayerSpan(first=value, last=value)
    first, last = value
    return pb.LayerSpan(first=int(first), last=int(last))


def budget_message(budget: Optional[Budget]) -> Optional["pb.ComputeBudget"]:
    if budget is None:
        return None
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a sluice_client.Budget, not {type(budget).__name__}")
    return pb.ComputeBudget(skip_ratio=budget.skip_ratio, experts_per_token=budget.experts_per_token,
                            attention_gate_floor=budget.attention_gate_floor,
                            skip_layers=[_layer_span(s) for s in budget.skip_layers])


def generate_request(prompt, tokens, *, max_tokens, min_tokens, temperature, top_k, top_p, min_p,
                     repetition_penalty, presence_penalty, frequency_penalty, seed, stop, stop_token_ids,
                     ignore_eos, budget, priority, logprobs, add_special_tokens, request_id) -> "pb.GenerateRequest":
    if prompt is not None and tokens is not None:
        raise ValueError("give either prompt (text) or tokens, not both")
    if isinstance(stop, (str, bytes)):
        stop = [stop]
    req = pb.GenerateRequest(
        sampling=pb.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                   repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                   frequency_penalty=frequency_penalty),
        stopping=pb.StoppingCriteria(max_tokens=max_tokens, min_tokens=min_tokens, stop=list(stop),
                                     stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos),
        priority=priority, add_special_tokens=add_special_tokens, request_id=request_id)
    if prompt is not None:
        req.text = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
    elif tokens is not None:
        req.tokens.ids.extend(tokens)
    # Neither: the request goes out without input and the daemon answers INVALID_ARGUMENT.
    if seed is not None:
        req.sampling.seed = seed
    b = budget_message(budget)
    if b is not None:
        req.budget.CopyFrom(b)
    if logprobs is not None:
        req.logprobs.top_n = logprobs
    return req


def finish_reason(value: int) -> str:
    try:
        name = pb.FinishReason.Name(value)
    except ValueError:
        return f"unknown_{value}"
    return name[len(_FINISH_PREFIX):].lower() if name.startswith(_FINISH_PREFIX) else name.lower()


def usage(msg) -> Usage:
    b = msg.budget
    return Usage(prompt_tokens=msg.prompt_tokens, completion_tokens=msg.completion_tokens,
                 cached_tokens=msg.cached_tokens, dense_flops=msg.dense_flops, executed_flops=msg.executed_flops,
                 budget=BudgetReport(branches_skipped=b.branches_skipped, branches_total=b.branches_total,
                                     mean_experts_per_token=b.mean_experts_per_token,
                                     attention_heads_skipped=b.attention_heads_skipped,
                                     attention_heads_total=b.attention_heads_total,
                                     layers_skipped=b.layers_skipped),
                 preemptions=msg.preemptions)


def logprob_list(items) -> List[TokenLogprob]:
    return [TokenLogprob(token_id=lp.token_id, logprob=lp.logprob,
                         top=[TopLogprob(token_id=t.token_id, logprob=t.logprob) for t in lp.top]) for lp in items]


def generate_result(msg) -> GenerateResult:
    return GenerateResult(text=msg.text, token_ids=list(msg.token_ids), finish_reason=finish_reason(msg.finish_reason),
                          usage=usage(msg.usage), logprobs=logprob_list(msg.logprobs), request_id=msg.request_id)


def stream_delta(msg) -> StreamDelta:
    last = msg.HasField("usage") or msg.finish_reason != 0
    return StreamDelta(text=msg.text, token_ids=list(msg.token_ids), logprobs=logprob_list(msg.logprobs),
                       finish_reason=finish_reason(msg.finish_reason) if last else None,
                       usage=usage(msg.usage) if last else None, request_id=msg.request_id)


def _copy_fields(cls, msg):
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(msg, f.name)
        values[f.name] = list(v) if not isinstance(v, (str, bytes, int, float, bool)) else v
    return cls(**values)


def model_info(msg) -> ModelInfo:
    return _copy_fields(ModelInfo, msg)


def engine_stats(msg) -> EngineStats:
    return _copy_fields(EngineStats, msg)

