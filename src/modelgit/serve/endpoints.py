"""The OpenAI endpoints: completions, chat completions (both streamed on request), embeddings,
and ``/v1/classify`` for classifiers.

A request is checked whole (model, fields, token budget) before it is queued; its jobs go to
the batcher, and the response has OpenAI's shape. A request with several prompts or inputs
fails as a whole when one of them fails (as OpenAI's does); other requests of its batch do not.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid

from fastapi import Request  # a module name: FastAPI reads the annotations

from .api_errors import APIError, bad_request, body as error_body
from .app import record
from .catalog import AUTO
from .engine import GenJob, TextJob
from .parsing import flag, messages, model_name, parse_body, sampling, stops, text_inputs

__all__ = ["add_endpoints"]

_DEFAULT_COMPLETION = 16  # OpenAI's default for /v1/completions
_DEFAULT_CHAT = 256


def add_endpoints(app, service) -> None:
    @app.post("/v1/completions")
    async def completions(request: Request):
        body, choice = await _start(request, service)
        choice.backend.need_task("causal_lm", "/v1/completions")
        prompts = text_inputs(body, "prompt", service.config.max_inputs)
        jobs = [_gen_job(body, choice, prompt, choice.backend.tokenize(prompt),
                         _DEFAULT_COMPLETION) for prompt in prompts]
        if flag(body, "stream"):
            if len(jobs) > 1:
                raise bad_request("streaming answers one prompt: send a single string", "prompt")
            return _stream(request, service, choice, jobs[0], chat=False)
        results = await _all(choice, "generate", jobs)
        record(service, request, 200, _usage_of(results))
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": choice.served,
                "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                             "logprobs": None} for i, r in enumerate(results)],
                "usage": _usage(results)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body, choice = await _start(request, service)
        choice.backend.need_task("causal_lm", "/v1/chat/completions")
        text, ids = choice.backend.chat_prompt(messages(body))
        job = _gen_job(body, choice, text, ids, _DEFAULT_CHAT)
        if flag(body, "stream"):
            return _stream(request, service, choice, job, chat=True)
        result = (await _all(choice, "generate", [job]))[0]
        record(service, request, 200, _usage_of([result]))
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": choice.served,
                "choices": [{"index": 0, "finish_reason": result.finish_reason, "logprobs": None,
                             "message": {"role": "assistant", "content": result.text}}],
                "usage": _usage([result])}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body, choice = await _start(request, service)
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise bad_request(f"'encoding_format' is {encoding!r:.40}: give float or base64",
                              "encoding_format", "invalid_value")
        results = await _all(choice, "embed", _text_jobs(service, body, choice))
        size = len(results[0].vector)
        if body.get("dimensions") not in (None, size):
            raise bad_request(f"'dimensions' is {body['dimensions']!r:.20}; this model's "
                              f"embeddings have {size}", "dimensions", "invalid_value")
        tokens = sum(r.tokens for r in results)
        record(service, request, 200, (tokens, 0))
        return {"object": "list", "model": choice.served,
                "data": [{"object": "embedding", "index": i,
                          "embedding": _encode(r.vector, encoding)} for i, r in enumerate(results)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/classify")
    async def classify(request: Request):
        body, choice = await _start(request, service)
        choice.backend.need_task("classification", "/v1/classify")
        results = await _all(choice, "classify", _text_jobs(service, body, choice))
        tokens = sum(r.tokens for r in results)
        record(service, request, 200, (tokens, 0))
        return {"object": "list", "model": choice.served,
                "data": [{"index": i, "label": r.label, "label_id": r.label_id,
                          "probability": r.probability, "adapter": r.adapter or "base"}
                         for i, r in enumerate(results)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def _start(request, service):
    """The request's body and model choice (kept on ``request.state`` for the metrics)."""
    request.state.started = time.monotonic()
    body = parse_body(await _read(request, service.config.max_body_bytes),
                      service.config.max_body_bytes)
    choice = service.choose(model_name(body), request.headers)
    request.state.choice = choice
    return body, choice


async def _read(request, limit: int) -> bytes:
    """The body, read no further than one byte past ``limit`` (a huge body is refused
    without being held in memory)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise bad_request(f"the request body is {declared} bytes; the limit is {limit}",
                          code="body_too_large")
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise bad_request(f"the request body is over {limit} bytes (the limit)",
                              code="body_too_large")
    return bytes(data)


def _adapter(choice):
    return (choice.target.adapter, AUTO if choice.target.kind == AUTO else None)


def _gen_job(body, choice, text: str, ids: list, default: int) -> GenJob:
    adapter, route = _adapter(choice)
    if not ids:
        raise bad_request("the prompt is empty after tokenization: give some text", "prompt")
    budget = choice.backend.budget(body, len(ids), default)
    return GenJob(adapter, ids, budget, stops(body), sampling(body).key, text, route=route)


def _text_jobs(service, body, choice) -> list[TextJob]:
    adapter, route = _adapter(choice)
    jobs = []
    for text in text_inputs(body, "input", service.config.max_inputs):
        ids = choice.backend.tokenize(text)
        choice.backend.check_input(ids)
        if not ids:
            raise bad_request("an input is empty after tokenization: give some text", "input")
        jobs.append(TextJob(adapter, ids, text, route))
    return jobs


async def _all(choice, kind: str, jobs: list) -> list:
    results = await asyncio.gather(*(choice.backend.batcher.submit(kind, job) for job in jobs),
                                   return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _usage(results) -> dict:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _usage_of(results) -> tuple[int, int]:
    usage = _usage(results)
    return usage["prompt_tokens"], usage["completion_tokens"]


def _encode(vector: list, encoding: str):
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _stream(request, service, choice, job: GenJob, chat: bool):
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    from fastapi.responses import StreamingResponse

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    job.emit = lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(delta: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            content = {} if delta is None else {"content": delta}
            if role:
                content = {"role": "assistant", "content": ""}
            piece = {"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}
            kind = "chat.completion.chunk"
        else:
            piece = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        return "data: " + json.dumps({"id": ident, "object": kind, "created": created,
                                      "model": choice.served, "choices": [piece]}) + "\n\n"

    task = asyncio.ensure_future(choice.backend.batcher.submit("generate", job))
    task.add_done_callback(lambda _: loop.call_soon(queue.put_nowait, None))

    async def events():
        status, tokens = 200, (0, 0)
        try:
            if chat:
                yield chunk(None, role=True)
            while True:
                text = await queue.get()
                if text is None:
                    break
                yield chunk(text)
            try:
                result = task.result()
                tokens = (result.prompt_tokens, result.completion_tokens)
                yield chunk(None, result.finish_reason)
            except APIError as exc:  # the headers are sent: the error goes in the stream
                status = exc.status
                yield "data: " + json.dumps(error_body(exc)) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            record(service, request, status, tokens)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
