"""The synchronous client."""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _common as c
from .errors import from_rpc_error
from .types import Budget, EngineStats, GenerateResult, ModelInfo, StreamDelta

__all__ = ["Client", "Stream"]


class Stream:
    """The deltas of one GenerateStream call: iterate it (each item a StreamDelta).

    A failure, at the start or midway, is raised from the iteration as the typed
    SluiceError of its status. cancel() (or leaving a `with` block, or close()) stops the
    request on the server at its next step; iterating after that raises CancelledError.
    """

    def __init__(self, call):
        self._call = call

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> StreamDelta:
        try:
            msg = next(self._call)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return c.stream_delta(msg)

    def cancel(self) -> bool:
        """Cancels the call; False when it had already ended."""
        return self._call.cancel()

    close = cancel

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self._call.cancel()

    def __del__(self):
        call = getattr(self, "_call", None)
        if call is not None:
            try:
                call.cancel()
            except Exception:  # interpreter shutdown
                pass


class Client:
    """A blocking client of one sluiced.

    address: HOST:PORT. api_key: sent as `authorization: Bearer KEY` on every call
    (default: $SLUICE_API_KEY; "" sends none). tls: connect over TLS, verifying the server
    against root_certificates (PEM bytes or a file path; default: the system's roots);
    client_certificate and client_key (PEM bytes or paths) for mutual TLS. Giving any of
    the three implies tls=True. timeout: the default deadline of every call in seconds
    (None: no deadline); each method's `timeout` keyword overrides it. options: extra gRPC
    channel arguments, e.g. (("grpc.ssl_target_name_override", "localhost"),).

    Every method raises the SluiceError subclass of the status the daemon answered
    (sluice_client.errors). Use as a context manager, or call close().
    """

    def __init__(self, address: str = c.DEFAULT_ADDRESS, *, api_key: Optional[str] = None, tls: bool = False,
                 root_certificates: c.PemSource = None, client_certificate: c.PemSource = None,
                 client_key: c.PemSource = None, timeout: Optional[float] = None,
                 options: Sequence[Tuple[str, Any]] = ()):
        self._config = c.ChannelConfig(address, api_key, tls, root_certificates, client_certificate, client_key,
                                       timeout, options)
        cfg = self._config
        if cfg.credentials is not None:
            self.channel = grpc.secure_channel(address, cfg.credentials, options=cfg.options)
        else:
            self.channel = grpc.insecure_channel(address, options=cfg.options)
        self._stub = c.pb_grpc.GenerationStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def address(self) -> str:
        return self._config.address

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=self._config.deadline(timeout), metadata=self._config.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def generate(self, prompt: Union[str, bytes, None] = None, *, tokens: Optional[Sequence[int]] = None,
                 max_tokens: int = 0, min_tokens: int = 0, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0, seed: Optional[int] = None,
                 stop: Sequence[str] = (), stop_token_ids: Sequence[int] = (), ignore_eos: bool = False,
                 budget: Optional[Budget] = None, priority: int = 0, logprobs: Optional[int] = None,
                 add_special_tokens: bool = False, request_id: str = "",
                 timeout: Optional[float] = None) -> GenerateResult:
        """Runs one request to completion.

        Give the input as `prompt` (text, tokenized by the daemon) or `tokens` (ids).
        Defaults are the proto's: greedy, no cuts or penalties, max_tokens=0 (up to the
        context). seed: the request's own sampling stream (same seed, same tokens,
        whatever the batch). logprobs=N returns the chosen token's logprob plus N
        alternatives (0..20); None returns none. budget: a Budget of compute to skip.
        """
        req = c.generate_request(prompt, tokens, max_tokens=max_tokens, min_tokens=min_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty, seed=seed, stop=stop,
                                 stop_token_ids=stop_token_ids, ignore_eos=ignore_eos, budget=budget,
                                 priority=priority, logprobs=logprobs, add_special_tokens=add_special_tokens,
                                 request_id=request_id)
        return c.generate_result(self._call(self._stub.Generate, req, timeout))

    def stream(self, prompt: Union[str, bytes, None] = None, *, tokens: Optional[Sequence[int]] = None,
               max_tokens: int = 0, min_tokens: int = 0, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
               presence_penalty: float = 0.0, frequency_penalty: float = 0.0, seed: Optional[int] = None,
               stop: Sequence[str] = (), stop_token_ids: Sequence[int] = (), ignore_eos: bool = False,
               budget: Optional[Budget] = None, priority: int = 0, logprobs: Optional[int] = None,
               add_special_tokens: bool = False, request_id: str = "",
               timeout: Optional[float] = None) -> Stream:
        """Like generate(), streamed: an iterator of StreamDelta, one per engine step that
        produced output; the last one carries finish_reason and usage."""
        req = c.generate_request(prompt, tokens, max_tokens=max_tokens, min_tokens=min_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty, seed=seed, stop=stop,
                                 stop_token_ids=stop_token_ids, ignore_eos=ignore_eos, budget=budget,
                                 priority=priority, logprobs=logprobs, add_special_tokens=add_special_tokens,
                                 request_id=request_id)
        return Stream(self._call(self._stub.GenerateStream, req, timeout))

    def tokenize(self, text: Union[str, bytes], *, add_special_tokens: bool = False,
                 timeout: Optional[float] = None) -> List[int]:
        """Text to token ids with the model's tokenizer."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        resp = self._call(self._stub.Tokenize, c.pb.TokenizeRequest(text=data, add_special_tokens=add_special_tokens),
                          timeout)
        return list(resp.ids)

    def detokenize(self, ids: Sequence[int], *, skip_special_tokens: bool = False,
                   timeout: Optional[float] = None) -> str:
        """Token ids to text with the model's tokenizer."""
        resp = self._call(self._stub.Detokenize,
                          c.pb.DetokenizeRequest(ids=list(ids), skip_special_tokens=skip_special_tokens), timeout)
        return resp.text

    def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        """What is loaded: architecture, shapes, parameters, limits, supported budget controls."""
        return c.model_info(self._call(self._stub.GetModelInfo, c.pb.GetModelInfoRequest(), timeout))

    def engine_stats(self, *, timeout: Optional[float] = None) -> EngineStats:
        """The engine's live state: queue, running set, free KV blocks and state slots."""
        return c.engine_stats(self._call(self._stub.GetEngineStats, c.pb.GetEngineStatsRequest(), timeout))

    def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        """grpc.health.v1 status: "SERVING", "NOT_SERVING" (loading or draining), ...
        `service` is "" (the server) or "sluice.v1.Generation"."""
        resp = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def close(self) -> None:
        """Closes the channel; calls still running are cancelled."""
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self._config.address!r}, tls={self._config.tls})"

