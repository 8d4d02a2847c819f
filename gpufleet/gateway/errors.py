"""Errors in the OpenAI shape, so that OpenAI clients show the message instead of a parse error:
``{"error": {"message": ..., "type": ..., "code": ...}}``."""

from __future__ import annotations

import json

from starlette.responses import Response


class GatewayError(Exception):
    """An answer the gateway gives itself (the backend's own errors pass through untouched)."""

    def __init__(self, status: int, message: str, type_: str, code: str | int) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.type, "code": self.code}}).encode()

    def headers(self) -> dict[str, str]:
        """Besides the content type: when to try again (503), how to authenticate (401)."""
        if self.status == 503:
            return {"retry-after": "1"}
        if self.status == 401:
            return {"www-authenticate": 'Bearer realm="gpufleet"'}
        return {}

    def response(self) -> Response:
        return Response(self.body(), status_code=self.status, media_type="application/json", headers=self.headers())


def refused(status: int, message: str) -> GatewayError:
    """A caller the server did not accept (401 no or bad key, 403, 503 server unreachable)."""
    kind = {401: "authentication_error", 403: "permission_error"}.get(status, "server_error")
    return GatewayError(status, message, kind, status)


def internal() -> GatewayError:
    return GatewayError(500, "the gateway failed; its log says why", "server_error", "internal_error")


def bad_request(message: str) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", "invalid_request")


def forbidden(model: str) -> GatewayError:
    return GatewayError(403, f"this key may not use the model {model!r}", "permission_error", "model_not_allowed")


def unknown_model(model: str) -> GatewayError:
    return GatewayError(404, f"the model {model!r} does not exist (no deployment of that name)",
                        "invalid_request_error", "model_not_found")


def no_replica(model: str, why: str) -> GatewayError:
    return GatewayError(503, f"the model {model!r} has no replica ready: {why}", "service_unavailable",
                        "no_replica")


def upstream_timeout(model: str, replica: str, seconds: float) -> GatewayError:
    return GatewayError(504, f"replica {replica} of {model!r} did not answer within {seconds:g} s",
                        "timeout", "upstream_timeout")


def upstream_failed(model: str, why: str) -> GatewayError:
    return GatewayError(502, f"the model {model!r} failed: {why}", "upstream_error", "upstream_failed")
