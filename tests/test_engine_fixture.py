import httpx


def test_real_engine_completes_text(llama_engine):
    reply = httpx.post(
        f"{llama_engine}/v1/completions",
        json={"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
        timeout=60,
    ).json()
    assert reply["choices"][0]["text"].strip()
