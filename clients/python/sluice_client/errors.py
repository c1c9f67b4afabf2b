"""Typed exceptions: one class per gRPC status code, all derived from SluiceError.

proto/sluice/v1/generation.proto documents which status each failure answers with:
INVALID_ARGUMENT, UNIMPLEMENTED, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNAVAILABLE,
DEADLINE_EXCEEDED, CANCELLED, INTERNAL, and UNAUTHENTICATED when the daemon checks API
keys. The codes the API does not use have classes too, so the mapping is one to one.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc

__all__ = [
    "SluiceError", "CancelledError", "UnknownError", "InvalidArgumentError", "DeadlineExceededError",
    "NotFoundError", "AlreadyExistsError", "PermissionDeniedError", "ResourceExhaustedError",
    "FailedPreconditionError", "AbortedError", "OutOfRangeError", "UnimplementedError", "InternalError",
    "UnavailableError", "DataLossError", "UnauthenticatedError", "error_class", "from_rpc_error",
]


class SluiceError(Exception):
    """A call that ended with a non-OK gRPC status.

    `code` is the grpc.StatusCode, `details` the server's message (it names the field or
    the limit). The grpc.RpcError it came from is the exception's __cause__.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str = "", code: Optional[grpc.StatusCode] = None):
        if code is not None:
            self.code = code
        self.details = details or ""
        super().__init__(f"{self.code.name}: {self.details}" if self.details else self.code.name)

    def __reduce__(self):
        return (type(self), (self.details, self.code))


class CancelledError(SluiceError):
    """CANCELLED: the call was cancelled (by this client, or the server stopped it)."""
    code = grpc.StatusCode.CANCELLED


class UnknownError(SluiceError):
    """UNKNOWN."""
    code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(SluiceError):
    """INVALID_ARGUMENT: a field is out of range or malformed; the message names it."""
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(SluiceError):
    """DEADLINE_EXCEEDED: the deadline passed while queued or running."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(SluiceError):
    """NOT_FOUND (e.g. a health check of a service name the server does not know)."""
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(SluiceError):
    """ALREADY_EXISTS."""
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(SluiceError):
    """PERMISSION_DENIED."""
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(SluiceError):
    """RESOURCE_EXHAUSTED: the admission queue is full, or a message is over the size limit."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(SluiceError):
    """FAILED_PRECONDITION: valid, but the loaded model cannot honour it (the message says
    which budget controls it supports, or that it has no tokenizer)."""
    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(SluiceError):
    """ABORTED."""
    code = grpc.StatusCode.ABORTED


class OutOfRangeError(SluiceError):
    """OUT_OF_RANGE."""
    code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(SluiceError):
    """UNIMPLEMENTED: part of the API this build does not implement yet (the message names it)."""
    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(SluiceError):
    """INTERNAL: a bug; the message says where."""
    code = grpc.StatusCode.INTERNAL


class UnavailableError(SluiceError):
    """UNAVAILABLE: the server is draining, not loaded yet, or cannot be reached."""
    code = grpc.StatusCode.UNAVAILABLE


class DataLossError(SluiceError):
    """DATA_LOSS."""
    code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(SluiceError):
    """UNAUTHENTICATED: the daemon checks API keys and the call had none or a wrong one."""
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[SluiceError]] = {
    cls.code: cls
    for cls in (CancelledError, UnknownError, InvalidArgumentError, DeadlineExceededError, NotFoundError,
                AlreadyExistsError, PermissionDeniedError, ResourceExhaustedError, FailedPreconditionError,
                AbortedError, OutOfRangeError, UnimplementedError, InternalError, UnavailableError, DataLossError,
                UnauthenticatedError)
}


def error_class(code: grpc.StatusCode) -> Type[SluiceError]:
    """The exception class of a status code (SluiceError for OK or an unknown code)."""
    return _BY_CODE.get(code, SluiceError)


def from_rpc_error(error: grpc.RpcError) -> SluiceError:
    """The typed exception of a grpc.RpcError (sync) or grpc.aio.AioRpcError."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    return error_class(code)(details or "", code)
