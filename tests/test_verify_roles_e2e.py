"""Apply proves each model with the request its role implies: a model served for embeddings
(`args: {embedding: true}`) is verified by an embeddings request that must return a vector, and
gets the mean pooling OpenAI clients need (llama.cpp's default for a generative model gives
none). Real engine, real model."""

from __future__ import annotations

import json
import os
import signal

import openai
import pytest
import yaml

from tests.conftest import free_port
from tests.test_apply_e2e import Workspace


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("embed"), free_port())
    plays = yaml.safe_load(ws.playbook.read_text())
    plays[0]["models"][0]["args"] = {"ctx_size": 512, "embedding": True}
    ws.playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    ws.first = ws.apply("--json")
    try:
        yield ws
    finally:
        ws.toolkit("down", str(ws.playbook))
        for pid, _ in ws.processes():
            os.kill(pid, signal.SIGKILL)


def test_the_embedding_model_is_verified_with_an_embeddings_request(embedder):
    assert embedder.first.returncode == 0, embedder.first.stdout + embedder.first.stderr
    events = [json.loads(line) for line in embedder.first.stdout.splitlines()]
    verify = next(e for e in events if e["event"] == "host")["verify"]["gemma-3-270m"]
    assert verify["kind"] == "embedding" and verify["text"] == "640 dimensions", verify


def test_openai_clients_get_one_vector_per_input(embedder):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{embedder.port}/v1", api_key="none")
    reply = client.embeddings.create(model="gemma", input=["hello", "world"])
    assert [len(d.embedding) for d in reply.data] == [640, 640]
