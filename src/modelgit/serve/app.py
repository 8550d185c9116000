"""The FastAPI application: :func:`create_app`, its error handlers, ``/health``, ``/metrics``
and ``/v1/models``; the OpenAI endpoints are in :mod:`.endpoints`."""

from __future__ import annotations

import logging
import time

from fastapi import Request  # a module name: FastAPI reads the annotations

from ..errors import ModelgitError
from .api_errors import APIError, body as error_body

__all__ = ["create_app"]

log = logging.getLogger("modelgit.serve")


def create_app(source, rev: str | None = None, config=None, task: str | None = None):
    """An OpenAI-compatible app serving ``source``.

    Args:
        source: a model repository (its release ``rev``), a router directory, a plain model
            directory, or a :class:`~modelgit.route.library.Library`.
        rev: the release of a repository (None: its newest); rollouts may name other revisions
            of the repository, each then served as well (see :mod:`.revisions`).
        config: a :class:`~.config.ServeConfig` (default settings when None).
        task: force ``causal_lm`` or ``classification``.
    Returns:
        A ``fastapi.FastAPI``; ``app.state.service`` holds the model, the batcher and metrics.
    Raises:
        UsageError: nothing servable at ``source``, an unknown release, a bad rollout (one
            naming an unknown model or revision).
    """
    import contextlib

    from fastapi import FastAPI

    from .catalog import open_catalog
    from .config import ServeConfig
    from .service import Service

    service = Service(open_catalog(source, rev, task), config or ServeConfig(), source)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        service.start()
        yield
        await service.stop()

    app = FastAPI(title="modelgit serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service
    _errors(app, service)
    _basic_routes(app, service)
    from .endpoints import add_endpoints

    add_endpoints(app, service)
    return app


def record(service, request, status: int, tokens: tuple[int, int] = (0, 0)) -> None:
    """Count a finished request in the metrics (its model, endpoint, status, latency, tokens;
    its rollout variant)."""
    state = request.state
    choice = getattr(state, "choice", None)
    model = choice.served if choice else "-"
    endpoint = request.url.path
    started = getattr(state, "started", None)
    metrics = service.metrics
    metrics.requests.labels(model, endpoint, str(status)).inc()
    if started is not None:
        metrics.latency.labels(model, endpoint).observe(time.monotonic() - started)
    if tokens[0]:
        metrics.tokens.labels(model, "prompt").inc(tokens[0])
    if tokens[1]:
        metrics.tokens.labels(model, "completion").inc(tokens[1])
    if choice is not None and choice.rollout:
        metrics.rollout_requests.labels(choice.rollout, choice.served, str(status)).inc()
        if started is not None:
            metrics.rollout_latency.labels(choice.rollout, choice.served).observe(
                time.monotonic() - started)


def error_response(service, request, error: APIError):
    """The JSON response of ``error``, counted in the metrics."""
    from fastapi.responses import JSONResponse

    service.metrics.errors.labels(error.detail.type, error.detail.code or "-").inc()
    record(service, request, error.status)
    return JSONResponse(error_body(error), status_code=error.status)


def _errors(app, service) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(APIError)
    async def _api(request, exc: APIError):
        return error_response(service, request, exc)

    @app.exception_handler(ModelgitError)
    async def _ours(request, exc: ModelgitError):
        return error_response(service, request, APIError(400, str(exc)))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = (f"{request.method} {request.url.path} does not exist: the endpoints are "
                   "/v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings, "
                   "/v1/classify, /health and /metrics") if exc.status_code in (404, 405) \
            else str(exc.detail)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(service, request, APIError(exc.status_code, message, kind, None, code))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return error_response(service, request, APIError(400, f"invalid request: {exc}"[:500]))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.error("request %s failed: %s", request.url.path, exc, exc_info=exc)
        return error_response(service, request, APIError(
            500, f"the server failed on this request ({type(exc).__name__}); it is logged",
            "server_error"))


def _basic_routes(app, service) -> None:
    from fastapi import Response

    created = int(time.time())

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": service.names, "adapters_loaded": service.pool.loaded,
                "task": service.catalog.task, "revisions": service.revision_commits}

    @app.get("/metrics")
    async def metrics():
        data, content_type = service.metrics.render()
        return Response(data, media_type=content_type)

    def _card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "modelgit"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_card(n) for n in service.names]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        request.state.choice = service.choose(name, request.headers)
        return _card(name)
