"""The proxy in front of the real llama.cpp engine, through the official openai client."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.upstream_standin import ProxyProcess


@pytest.fixture(scope="module")
def gemma_proxy(llama_engine, tmp_path_factory, proxy_server):
    routes = {
        "models": {
            "gemma-3-270m": {
                "aliases": ["gemma"],
                "backends": [{"url": llama_engine, "runtime": "llamacpp"}],
                "capabilities": {"system_role": False, "max_context": 2048},
            }
        }
    }
    proxy = ProxyProcess(routes, tmp_path_factory.mktemp("proxy"), server=proxy_server)
    yield proxy
    proxy.stop()


@pytest.fixture
def client(gemma_proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=gemma_proxy.url + "/v1", api_key="unused", max_retries=0)


def test_lists_models_with_aliases(client):
    models = {model.id: model for model in client.models.list()}
    assert set(models) == {"gemma-3-270m", "gemma"}
    assert models["gemma"].owned_by == "llamacpp"
    assert models["gemma"].model_extra["root"] == "gemma-3-270m"
    assert client.models.retrieve("gemma").id == "gemma"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_completion(client):
    reply = client.chat.completions.create(
        model="gemma",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello."},
        ],
        max_tokens=8,
    )
    assert reply.choices[0].message.content
    assert reply.usage.total_tokens > 0


def test_text_completion(client):
    reply = client.completions.create(
        model="gemma-3-270m", prompt="The capital of France is", max_tokens=8
    )
    assert reply.choices[0].text


def test_streamed_chat(client):
    stream = client.chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 1
    assert "".join(pieces)


def test_embeddings(client):
    result = client.embeddings.create(model="gemma", input="hello world")
    assert len(result.data[0].embedding) > 0


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert "gemma-3-270m" in info.value.message
    assert info.value.code == "model_not_found"


def test_too_long_prompt_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="gemma", prompt="word " * 3000, max_tokens=1)
    assert info.value.code == "context_length_exceeded"


def test_invalid_json_is_a_bad_request(gemma_proxy):
    response = httpx.post(
        gemma_proxy.url + "/v1/chat/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_health_and_metrics(gemma_proxy, client):
    client.completions.create(model="gemma", prompt="Hello", max_tokens=2)
    health = httpx.get(gemma_proxy.url + "/health").json()
    assert health == {"status": "ok", "models": {"gemma-3-270m": {"healthy": 1, "backends": 1}}}
    metrics = httpx.get(gemma_proxy.url + "/metrics").text
    assert 'toolkit_proxy_requests_total{backend="http://127.0.0.1:' in metrics
    assert "toolkit_proxy_time_to_first_byte_seconds_bucket" in metrics
    assert "toolkit_proxy_backend_healthy" in metrics
    # the engine runs 4 slots (-np 4); the health check read them from llama.cpp's /slots
    assert 'toolkit_proxy_backend_slots{backend="http://127.0.0.1:' in metrics


def test_responses_api(client):
    reply = client.responses.create(
        model="gemma", input="The capital of France is", max_output_tokens=8
    )
    assert reply.output_text
