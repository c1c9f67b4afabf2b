"""The asyncio client (grpc.aio): the same methods as Client, as coroutines."""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _common as c
from .errors import CancelledError, from_rpc_error
from .types import Budget, EngineStats, GenerateResult, ModelInfo, StreamDelta

__all__ = ["AsyncClient", "AsyncStream"]


class AsyncStream:
    """The deltas of one GenerateStream call: `async for delta in stream`.

    Failures are raised from the iteration as typed SluiceErrors. cancel() (or leaving
    an `async with` block) stops the request on the server at its next step.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall):
        self._call = call
        self._cancelled = False

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> StreamDelta:
        try:
            msg = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        except asyncio.CancelledError:
            # grpc.aio reports a call this stream cancelled as asyncio.CancelledError; that is
            # sluice_client.CancelledError, as in the sync client. The task's own cancellation
            # passes through untouched.
            task = asyncio.current_task()
            if self._cancelled and not (task is not None and getattr(task, "cancelling", lambda: 0)()):
                raise CancelledError("the client cancelled the stream") from None
            raise
        if msg is grpc.aio.EOF:
            raise StopAsyncIteration
        return c.stream_delta(msg)

    def cancel(self) -> bool:
        """Cancels the call; False when it had already ended."""
        self._cancelled = True
        return self._call.cancel()

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()


class AsyncClient:
    """An asyncio client of one sluiced; the arguments are Client's.

    Make it inside the running event loop (grpc.aio binds a channel to its loop), use it
    as `async with AsyncClient(...) as client:` or `await client.close()`.
    """

    def __init__(self, address: str = c.DEFAULT_ADDRESS, *, api_key: Optional[str] = None, tls: bool = False,
                 root_certificates: c.PemSource = None, client_certificate: c.PemSource = None,
                 client_key: c.PemSource = None, timeout: Optional[float] = None,
                 options: Sequence[Tuple[str, Any]] = ()):
        self._config = c.ChannelConfig(address, api_key, tls, root_certificates, client_certificate, client_key,
                                       timeout, options)
        cfg = self._config
        if cfg.credentials is not None:
            self.channel = grpc.aio.secure_channel(address, cfg.credentials, options=cfg.options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=cfg.options)
        self._stub = c.pb_grpc.GenerationStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def address(self) -> str:
        return self._config.address

    async def _call(self, method, request, timeout):
        try:
            return await method(request, timeout=self._config.deadline(timeout), metadata=self._config.metadata)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e

    async def generate(self, prompt: Union[str, bytes, None] = None, *, tokens: Optional[Sequence[int]] = None,
                       max_tokens: int = 0, min_tokens: int = 0, temperature: float = 0.0, top_k: int = 0,
                       top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                       presence_penalty: float = 0.0, frequency_penalty: float = 0.0, seed: Optional[int] = None,
                       stop: Sequence[str] = (), stop_token_ids: Sequence[int] = (), ignore_eos: bool = False,
                       budget: Optional[Budget] = None, priority: int = 0, logprobs: Optional[int] = None,
                       add_special_tokens: bool = False, request_id: str = "",
                       timeout: Optional[float] = None) -> GenerateResult:
        """Runs one request to completion (see Client.generate)."""
        req = c.generate_request(prompt, tokens, max_tokens=max_tokens, min_tokens=min_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty, seed=seed, stop=stop,
                                 stop_token_ids=stop_token_ids, ignore_eos=ignore_eos, budget=budget,
                                 priority=priority, logprobs=logprobs, add_special_tokens=add_special_tokens,
                                 request_id=request_id)
        return c.generate_result(await self._call(self._stub.Generate, req, timeout))

    def stream(self, prompt: Union[str, bytes, None] = None, *, tokens: Optional[Sequence[int]] = None,
               max_tokens: int = 0, min_tokens: int = 0, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
               presence_penalty: float = 0.0, frequency_penalty: float = 0.0, seed: Optional[int] = None,
               stop: Sequence[str] = (), stop_token_ids: Sequence[int] = (), ignore_eos: bool = False,
               budget: Optional[Budget] = None, priority: int = 0, logprobs: Optional[int] = None,
               add_special_tokens: bool = False, request_id: str = "",
               timeout: Optional[float] = None) -> AsyncStream:
        """Like generate(), streamed: `async for delta in client.stream(...)` (not awaited)."""
        req = c.generate_request(prompt, tokens, max_tokens=max_tokens, min_tokens=min_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty, seed=seed, stop=stop,
                                 stop_token_ids=stop_token_ids, ignore_eos=ignore_eos, budget=budget,
                                 priority=priority, logprobs=logprobs, add_special_tokens=add_special_tokens,
                                 request_id=request_id)
        return AsyncStream(self._stub.GenerateStream(req, timeout=self._config.deadline(timeout),
                                                     metadata=self._config.metadata))

    async def tokenize(self, text: Union[str, bytes], *, add_special_tokens: bool = False,
                       timeout: Optional[float] = None) -> List[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        resp = await self._call(self._stub.Tokenize,
                                c.pb.TokenizeRequest(text=data, add_special_tokens=add_special_tokens), timeout)
        return list(resp.ids)

    async def detokenize(self, ids: Sequence[int], *, skip_special_tokens: bool = False,
                         timeout: Optional[float] = None) -> str:
        resp = await self._call(self._stub.Detokenize,
                                c.pb.DetokenizeRequest(ids=list(ids), skip_special_tokens=skip_special_tokens),
                                timeout)
        return resp.text

    async def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        return c.model_info(await self._call(self._stub.GetModelInfo, c.pb.GetModelInfoRequest(), timeout))

    async def engine_stats(self, *, timeout: Optional[float] = None) -> EngineStats:
        return c.engine_stats(await self._call(self._stub.GetEngineStats, c.pb.GetEngineStatsRequest(), timeout))

    async def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        resp = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def close(self, grace: Optional[float] = None) -> None:
        """Closes the channel; calls still running after `grace` seconds are cancelled."""
        await self.channel.close(grace)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self._config.address!r}, tls={self._config.tls})"
