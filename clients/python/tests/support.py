"""Client plumbing shared by the tests: a bearer-token channel wrapper with a
default deadline, and decoding of google.rpc error details."""

import collections

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Every call gets a deadline, so a hung server fails a test instead of the run.
DEFAULT_TIMEOUT_SECONDS = 10.0

ERROR_DOMAIN = "aether-control"

# The google.rpc detail messages the service sends, by name.
DETAIL_TYPES = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
    error_details_pb2.DebugInfo,
)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class Auth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: <value>` (when given) and a default deadline."""

    def __init__(self, authorization):
        self.authorization = authorization

    def _details(self, details):
        metadata = list(details.metadata or [])
        if self.authorization is not None:
            metadata.append(("authorization", self.authorization))
        timeout = details.timeout if details.timeout is not None else DEFAULT_TIMEOUT_SECONDS
        return _CallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)


def authed(channel, token=None, *, authorization=None):
    """`channel` sending `Bearer <token>` (or the raw `authorization` value)."""
    if authorization is None and token is not None:
        authorization = f"Bearer {token}"
    return grpc.intercept_channel(channel, Auth(authorization))


class Failure:
    """A failed call: its code, message and decoded google.rpc details."""

    def __init__(self, error):
        self.error = error
        self.code = error.code()
        self.message = error.details()
        # Raises ValueError if grpc-status-details-bin disagrees with the
        # call's own code or message; None when the trailer is absent.
        self.status = rpc_status.from_call(error)
        self.details = {}
        for packed in self.status.details if self.status else ():
            for kind in DETAIL_TYPES:
                if packed.Is(kind.DESCRIPTOR):
                    message = kind()
                    packed.Unpack(message)
                    self.details[kind.__name__] = message
                    break
            else:
                self.details[packed.type_url] = packed

    def __repr__(self):
        return f"Failure({self.code}, {self.message!r}, {sorted(self.details)})"

    @property
    def error_info(self):
        return self.details.get("ErrorInfo")

    @property
    def bad_request(self):
        return self.details.get("BadRequest")

    @property
    def resource_info(self):
        return self.details.get("ResourceInfo")


def fails(code, call, *args, **kwargs):
    """Calls `call`, asserts it fails with `code`, returns the Failure.

    Every error this service returns carries google.rpc details with an
    ErrorInfo in the service's domain, so that is checked here too."""
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    failure = Failure(raised.value)
    assert failure.code == code, failure
    assert failure.status is not None, f"no grpc-status-details-bin on {failure}"
    assert failure.status.code == code.value[0], failure
    assert failure.error_info is not None, f"no ErrorInfo in {failure}"
    assert failure.error_info.domain == ERROR_DOMAIN, failure
    return failure
