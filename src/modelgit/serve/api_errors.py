"""Errors a request gets back: an HTTP status and OpenAI's error body.

``{"error": {"message", "type", "param", "code"}}``, as OpenAI's API and its clients expect
(``openai.BadRequestError`` and friends read them). Nothing else leaves the server: an
unexpected exception becomes a 500 with a short message, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["APIError", "bad_request", "not_found", "body"]


@dataclass(frozen=True)
class _Body:
    message: str
    type: str
    param: str | None
    code: str | None


class APIError(Exception):
    """A request the server refuses or could not answer.

    Args:
        status: the HTTP status (4xx: the request's fault; 5xx: ours).
        message: what failed, with the values, and how to fix it.
        type: OpenAI's error type (``invalid_request_error``, ``not_found_error``,
            ``server_error``).
        param: the request field at fault, when there is one.
        code: a short machine-readable code (``model_not_found``, ``context_length_exceeded``...).
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.detail = _Body(message, type, param, code)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, "invalid_request_error", param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 404 (an unknown model: OpenAI answers ``model_not_found`` with 404)."""
    return APIError(404, message, "invalid_request_error", param, code)


def body(error: APIError) -> dict:
    """The JSON body of ``error``."""
    d = error.detail
    return {"error": {"message": d.message, "type": d.type, "param": d.param, "code": d.code}}
