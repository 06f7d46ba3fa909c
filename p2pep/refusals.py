"""Refusals: a request refused on purpose, naming the field at fault and the status it earns.

Pure (no gRPC here), so domain cores raise them too (the market's errors are refusals). A
service never builds a status itself: :class:`p2pep.servicekit.errors.RefusalInterceptor`
answers any :class:`Refused` that escapes a handler with ``grpc.StatusCode[status]`` and
``"<field>: <message>"``.
"""

from __future__ import annotations


class Refused(Exception):
    status: str = "FAILED_PRECONDITION"  # the name of a grpc.StatusCode (a class may choose per instance)

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class InvalidArgument(Refused):
    status = "INVALID_ARGUMENT"


class NotFound(Refused):
    status = "NOT_FOUND"


class AlreadyExists(Refused):
    status = "ALREADY_EXISTS"


class FailedPrecondition(Refused):
    status = "FAILED_PRECONDITION"


class Aborted(Refused):
    status = "ABORTED"


class PermissionDenied(Refused):
    status = "PERMISSION_DENIED"


class Unauthenticated(Refused):
    status = "UNAUTHENTICATED"


class Unavailable(Refused):
    status = "UNAVAILABLE"


class ResourceExhausted(Refused):
    status = "RESOURCE_EXHAUSTED"
