"""Typed errors of the coding library (no grpc here; the services map them to status codes)."""


class CodingError(ValueError):
    """A request the coding math cannot serve: wrong shape, unknown scheme, bad k. Maps to INVALID_ARGUMENT."""
