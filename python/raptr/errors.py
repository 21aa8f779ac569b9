"""Errors the client raises: one class per gRPC status a caller may want to handle, each carrying
the status code, the coordinator's message and, where the message names one, the field."""
import re

import grpc

# The coordinator's INVALID_ARGUMENT messages start with the offending field's path:
# "optimizer.lr must be > 0, got -1", "schedule.raptr.stages[1].path_length (13) must be ...".
_FIELD = re.compile(r"^([a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])?)+)")


class RaptrError(Exception):
    """A call the coordinator refused or could not answer. `code` is the grpc.StatusCode,
    `details` the coordinator's message, `field` the job spec field it names (or None)."""

    def __init__(self, code, details, method=""):
        self.code = code
        self.details = details
        self.method = method
        m = _FIELD.match(details or "")
        self.field = m.group(1) if m else None
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {details}")


class InvalidSpec(RaptrError):
    """INVALID_ARGUMENT: a job spec (or request) the coordinator rejected; nothing was stored."""


class NotFound(RaptrError):
    """NOT_FOUND: no such job."""


class Unauthenticated(RaptrError):
    """UNAUTHENTICATED: no credential, or one the coordinator does not know."""


class PermissionDenied(RaptrError):
    """PERMISSION_DENIED: the credential's role or owner does not allow the call."""


class FailedPrecondition(RaptrError):
    """FAILED_PRECONDITION: e.g. cancelling a job that already ended."""


class Unavailable(RaptrError):
    """UNAVAILABLE or DEADLINE_EXCEEDED: the coordinator could not be reached in time."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidSpec,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def from_rpc_error(error, method=""):
    """The RaptrError subclass for a grpc.RpcError."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return _BY_CODE.get(code, RaptrError)(code, details or "", method)
