"""The OpenAI endpoints over real HTTP on localhost, with the official `openai` client and raw
httpx: models, completions, chat, streaming, embeddings, classification, and `auto` routing."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import pytest

openai = pytest.importorskip("openai")

from route_texts import ANIMALS, CODE  # noqa: E402

PROMPTS = {"animals": "the cat sat on the", "code": "def add ( x", "base": "a bird flew"}


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_completions_and_chat_match_each_model_alone(serve, lm_library, alone):
    server = serve(lm_library)
    client = _client(server)
    assert [m.id for m in client.models.list()] == ["base", "animals", "code"]
    texts = {}
    for model, prompt in PROMPTS.items():
        answer = client.completions.create(model=model, prompt=prompt, max_tokens=8)
        texts[model] = answer.choices[0].text
        assert answer.model == model and answer.object == "text_completion"
        assert texts[model] == alone(None if model == "base" else model, prompt, 8)
        assert answer.usage.completion_tokens <= 8 and answer.usage.prompt_tokens > 0
    # the adapters do change the output (else the comparisons above prove little)
    assert len({client.completions.create(model=m, prompt=PROMPTS["animals"], max_tokens=8)
                .choices[0].text for m in ("base", "animals", "code")}) == 3
    chat = client.chat.completions.create(model="animals", max_tokens=6,
                                          messages=[{"role": "user", "content": "the dog"}])
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    # a tokenizer without a chat template: role lines ending with "assistant:"
    assert chat.choices[0].message.content == alone("animals", "user: the dog\nassistant:", 6)
    many = client.completions.create(model="code", prompt=[CODE[0][:10], CODE[1][:10]], max_tokens=4)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[1].text == alone("code", CODE[1][:10], 4)


def test_streaming_sends_the_same_text_in_openai_chunks(serve, lm_library):
    server = serve(lm_library)
    client = _client(server)
    whole = client.completions.create(model="code", prompt="for i in", max_tokens=10).choices[0].text
    pieces = list(client.completions.create(model="code", prompt="for i in", max_tokens=10,
                                            stream=True))
    assert "".join(p.choices[0].text for p in pieces) == whole
    assert pieces[-1].choices[0].finish_reason in ("length", "stop")
    chat = {"model": "animals", "max_tokens": 7, "messages": [{"role": "user", "content": "a fox"}]}
    whole = client.chat.completions.create(**chat).choices[0].message.content
    chunks = list(client.chat.completions.create(**chat, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    # raw: server-sent events ending with [DONE]
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**chat, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("length", "stop")


def test_stop_sequences_cut_the_text_and_the_stream(serve, lm_library):
    server = serve(lm_library)
    client = _client(server)
    full = client.completions.create(model="animals", prompt="the dog", max_tokens=12).choices[0].text
    words = full.split()
    assert len(words) >= 3
    stop = " " + words[2]
    cut = client.completions.create(model="animals", prompt="the dog", max_tokens=12, stop=stop)
    assert cut.choices[0].text == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model="animals", prompt="the dog", max_tokens=12,
                                              stop=[stop], stream=True))
    assert "".join(p.choices[0].text for p in streamed) == cut.choices[0].text


def test_embeddings_float_and_base64(serve, lm_library):
    server = serve(lm_library)
    client = _client(server)
    # the openai client asks for base64 and decodes it
    answer = client.embeddings.create(model="animals", input=[ANIMALS[0], CODE[0]])
    vectors = [d.embedding for d in answer.data]
    assert len(vectors) == 2 and len(vectors[0]) == 32
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-4  # unit length
    raw = httpx.post(server.url + "/v1/embeddings", json={"model": "animals", "input": ANIMALS[0],
                                                          "encoding_format": "float"}).json()
    assert raw["data"][0]["embedding"] == pytest.approx(vectors[0], abs=1e-6)
    b64 = httpx.post(server.url + "/v1/embeddings", json={"model": "animals", "input": ANIMALS[0],
                                                          "encoding_format": "base64"}).json()
    decoded = struct.unpack("<32f", base64.b64decode(b64["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(vectors[0], abs=1e-6)
    base = client.embeddings.create(model="base", input=ANIMALS[0]).data[0].embedding
    assert base != pytest.approx(vectors[0], abs=1e-6)  # the adapter changes the states


def test_classify_on_a_classifier_library(serve, cls_library):
    server = serve(cls_library)
    answer = httpx.post(server.url + "/v1/classify", json={
        "model": "sentiment", "input": ["good great fine nice", "bad awful poor sad"]})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [d["label_id"] for d in data] == [1, 0] and all(0.5 < d["probability"] <= 1 for d in data)
    refused = httpx.post(server.url + "/v1/completions", json={"model": "sentiment", "prompt": "x"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_model"
    # an encoder's embeddings: its last hidden states mean-pooled, the adapter applied
    vectors = {m: httpx.post(server.url + "/v1/embeddings", json={"model": m, "input": "good"})
               .json()["data"][0]["embedding"] for m in ("sentiment", "base")}
    assert abs(sum(x * x for x in vectors["sentiment"]) - 1) < 1e-4
    assert vectors["sentiment"] != pytest.approx(vectors["base"], abs=1e-6)


def test_auto_routes_each_prompt_to_its_adapter(serve, lm_library, tmp_path, alone):
    from modelgit.route import BuildRequest, build_router, save

    router = build_router(lm_library, BuildRequest("examples", examples={"animals": ANIMALS,
                                                                         "code": CODE}))
    directory = save(router, str(tmp_path / "router"), lm_library)
    server = serve(directory)
    client = _client(server)
    assert "auto" in [m.id for m in client.models.list()]
    for prompt, adapter in ((ANIMALS[2], "animals"), (CODE[3], "code")):
        text = client.completions.create(model="auto", prompt=prompt, max_tokens=6).choices[0].text
        assert text == alone(adapter, prompt, 6)
