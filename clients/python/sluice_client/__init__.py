"""Python client of the sluice inference daemon (sluiced), sync and asyncio.

    from sluice_client import Client, Budget, InvalidArgumentError

    with Client("127.0.0.1:50051") as client:
        result = client.generate("Hello", max_tokens=16, temperature=0.7, seed=1)
        for delta in client.stream("Hello", max_tokens=16):
            print(delta.text, end="")

AsyncClient has the same methods as coroutines (stream() is an async iterator). Errors
are SluiceError subclasses, one per gRPC status code (sluice_client.errors). The gRPC
stubs generated from proto/ at install time are sluice_client.generation_pb2 and
sluice_client.generation_pb2_grpc.
"""

from ._common import pb as generation_pb2
from ._common import pb_grpc as generation_pb2_grpc
from .aio import AsyncClient, AsyncStream
from .client import Client, Stream
from .errors import (AbortedError, AlreadyExistsError, CancelledError, DataLossError, DeadlineExceededError,
                     FailedPreconditionError, InternalError, InvalidArgumentError, NotFoundError, OutOfRangeError,
                     PermissionDeniedError, ResourceExhaustedError, SluiceError, UnauthenticatedError,
                     UnavailableError, UnimplementedError, UnknownError)
from .types import (Budget, BudgetReport, EngineStats, GenerateResult, ModelInfo, StreamDelta, TokenLogprob,
                    TopLogprob, Usage)

__version__ = "0.1.0"

__all__ = [
    "Client", "AsyncClient", "Stream", "AsyncStream",
    "Budget", "BudgetReport", "Usage", "GenerateResult", "StreamDelta", "TokenLogprob", "TopLogprob", "ModelInfo",
    "EngineStats",
    "SluiceError", "CancelledError", "UnknownError", "InvalidArgumentError", "DeadlineExceededError",
    "NotFoundError", "AlreadyExistsError", "PermissionDeniedError", "ResourceExhaustedError",
    "FailedPreconditionError", "AbortedError", "OutOfRangeError", "UnimplementedError", "InternalError",
    "UnavailableError", "DataLossError", "UnauthenticatedError",
    "generation_pb2", "generation_pb2_grpc",
]
