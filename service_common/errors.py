"""Typed service errors. The core raises these; one interceptor turns them into gRPC statuses.

No gRPC here: each error names its status (``status``, the gRPC name), so the cores that raise them import
no transport; :func:`service_common.interceptor.status_of` turns the name into the status code.
"""

from __future__ import annotations

from coding.errors import CodingError


class ServiceError(Exception):
    """Base: an error whose message is safe to show the caller."""

    status = "INTERNAL"  # the name of the gRPC status it maps to


class InvalidArgument(ServiceError):
    status = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    status = "NOT_FOUND"


class Unavailable(ServiceError):
    status = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    status = "DEADLINE_EXCEEDED"


class ResourceExhausted(ServiceError):
    status = "RESOURCE_EXHAUSTED"


class BindError(OSError):
    """A server could not bind its address (in use by another process, or not ours to bind): a gRPC port
    (:mod:`service_common.server`) or the metrics port (:mod:`service_common.metrics`)."""


def status_name(exc: BaseException) -> str | None:
    """The gRPC status name for an error we know, or None for an unexpected one (-> INTERNAL)."""
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, CodingError):
        return "INVALID_ARGUMENT"
    return None


def code_name(exc: BaseException) -> str:
    """The gRPC name of the status ``exc`` maps to (``DEADLINE_EXCEEDED``...; ``INTERNAL`` for an
    unexpected error): the one spelling of a status in every metric label."""
    return status_name(exc) or "INTERNAL"
