"""Typed service errors. The core raises these; one interceptor turns them into gRPC statuses."""

from __future__ import annotations

import grpc

from coding.errors import CodingError


class ServiceError(Exception):
    """Base: an error whose message is safe to show the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BindError(OSError):
    """A server could not bind its address (in use by another process, or not ours to bind): a gRPC port
    (:mod:`service_common.server`) or the metrics port (:mod:`service_common.metrics`)."""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The (code, message) for an error we know, or None for an unexpected one (-> INTERNAL)."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if isinstance(exc, CodingError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return None


def code_name(exc: BaseException) -> str:
    """The gRPC name of the status ``exc`` maps to (``DEADLINE_EXCEEDED``...; ``INTERNAL`` for an
    unexpected error): the one spelling of a status in every metric label."""
    known = status_of(exc)
    return known[0].name if known is not None else grpc.StatusCode.INTERNAL.name
