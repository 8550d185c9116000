"""Bad requests get a 4xx with OpenAI's error body, never a traceback; the server lives on."""

from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai")


@pytest.fixture
def server(serve, lm_library):
    return serve(lm_library)


def _error(answer, status: int, code=None, param=None) -> dict:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize("body, status, code, param, says", [
    (b"{", 400, "invalid_json", None, "JSON"),
    (b"[1, 2]", 400, "invalid_json", None, "object"),
    (b'{"model": "base", "prompt": "x", "prompt": "y"}', 400, "invalid_json", None, "duplicate"),
    (b'{"model": "animal", "prompt": "x"}', 404, "model_not_found", "model", "'animals'"),
    (b'{"model": 3, "prompt": "x"}', 400, "invalid_type", "model", "string"),
    (b'{"model": "base"}', 400, "missing_required_parameter", "prompt", "missing"),
    (b'{"model": "base", "prompt": 5}', 400, "invalid_type", "prompt", "string"),
    (b'{"model": "base", "prompt": [[1, 2]]}', 400, "invalid_type", "prompt", "string"),
    (b'{"model": "base", "prompt": "x", "max_tokens": 10000000}', 400, "invalid_value",
     "max_tokens", "from 1 to 511"),
    (b'{"model": "base", "prompt": "x", "max_tokens": 0}', 400, "invalid_value", "max_tokens", None),
    (b'{"model": "base", "prompt": "x", "max_tokens": "12"}', 400, "invalid_type", "max_tokens", None),
    (b'{"model": "base", "prompt": "x", "max_tokens": 1.5}', 400, "invalid_type", "max_tokens", None),
    (b'{"model": "base", "prompt": "x", "temperature": "hot"}', 400, "invalid_type", "temperature", None),
    (b'{"model": "base", "prompt": "x", "temperature": 9}', 400, "invalid_value", "temperature", None),
    (b'{"model": "base", "prompt": "x", "n": 3}', 400, "unsupported_parameter", "n", None),
    (b'{"model": "base", "prompt": "x", "stream": "yes"}', 400, "invalid_type", "stream", None),
    (b'{"model": "base", "prompt": "x", "stop": 7}', 400, "invalid_type", "stop", None),
    (b'{"model": "base", "prompt": "x", "max_tokens": 1e999}', 400, "invalid_json", None, None),
])
def test_bad_completion_requests(server, body, status, code, param, says):
    answer = httpx.post(server.url + "/v1/completions", content=body,
                        headers={"content-type": "application/json"})
    error = _error(answer, status, code, param)
    if says:
        assert says in error["message"], error["message"]


def test_prompts_beyond_the_context(server):
    long_prompt = " ".join(["the cat sat on the mat"] * 200)  # > 512 tokens
    answer = httpx.post(server.url + "/v1/completions",
                        json={"model": "base", "prompt": long_prompt, "max_tokens": 4})
    error = _error(answer, 400, "context_length_exceeded", "prompt")
    assert "maximum context length is 512 tokens" in error["message"]
    fits_alone = " ".join(["the cat sat"] * 120)
    answer = httpx.post(server.url + "/v1/completions",
                        json={"model": "base", "prompt": fits_alone, "max_tokens": 500})
    _error(answer, 400, "context_length_exceeded")
    answer = httpx.post(server.url + "/v1/embeddings", json={"model": "base", "input": long_prompt})
    _error(answer, 400, "context_length_exceeded", "input")


def test_chat_message_shapes(server):
    for messages, says in (([], "non-empty"), ([{"role": "wizard", "content": "x"}], "role"),
                           ([{"role": "user", "content": 4}], "string"),
                           ([{"role": "user", "content": [{"type": "image_url"}]}], "text parts")):
        answer = httpx.post(server.url + "/v1/chat/completions",
                            json={"model": "base", "messages": messages})
        assert says in _error(answer, 400, param="messages")["message"]


def test_unknown_paths_methods_and_oversized_bodies(server):
    _error(httpx.get(server.url + "/v1/nothing"), 404, "not_found")
    _error(httpx.get(server.url + "/v1/completions"), 405, "method_not_allowed")
    huge = b'{"model": "base", "prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    _error(httpx.post(server.url + "/v1/completions", content=huge), 400, "body_too_large")

    def chunks():  # no Content-Length: refused once the limit is passed, not read whole
        yield b'{"model": "base", "prompt": "'
        for _ in range(5 * 1024):
            yield b"a" * 1024

    _error(httpx.post(server.url + "/v1/completions", content=chunks()), 400, "body_too_large")
    long_name = httpx.post(server.url + "/v1/completions", json={"model": "m" * 100_000, "prompt": "x"})
    _error(long_name, 400, "invalid_value", "model")


def test_the_openai_client_sees_typed_errors_and_the_server_lives_on(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="cod", prompt="x")
    assert "did you mean 'code'?" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="code", max_tokens=-1,
                                       messages=[{"role": "user", "content": "x"}])
    assert bad.value.body["param"] == "max_tokens"
    assert client.completions.create(model="code", prompt="x", max_tokens=2).choices[0].text is not None
    metrics = httpx.get(server.url + "/metrics").text
    assert 'modelgit_errors_total{code="model_not_found",type="invalid_request_error"} 1.0' in metrics
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
