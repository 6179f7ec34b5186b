"""The real llama.cpp engine behind the Ollama and LlamaEdge stand-ins, so they serve real tokens.

tests/runtime_releases.py copies this file into the stand-in release archives (beside the
stand-in executables, under ``lib/``). ``start_engine`` runs llama.cpp's own HTTP server from the
``xllamacpp`` wheel inside the stand-in's process on a free loopback port; ``forward`` passes an
OpenAI request to it and streams the answer back unchanged. Standard library plus xllamacpp.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

# Chat templates (Jinja, as llama.cpp takes them) for the prompt-template names the stand-ins meet.
GEMMA = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' -}}"
    "{{- message['content'] | trim + '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)
CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_SERVERS: list = []  # native servers live as long as the process (they have no clean stop)


def start_engine(
    gguf: str, alias: str, ctx_size: int = 2048, chat_template: str | None = None
) -> str:
    """Start llama.cpp on ``gguf``; returns its base URL once /health answers 200."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.hostnames = ["127.0.0.1"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        params.port = sock.getsockname()[1]
    params.n_ctx = ctx_size
    params.model_alias = {alias}
    if chat_template:
        params.chat_template = chat_template
        params.use_jinja = True
    _SERVERS.append(xllamacpp.Server(params))
    url = f"http://127.0.0.1:{params.port}"
    for _ in range(1200):  # bounded: at most ~2 minutes
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return url
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"llama.cpp engine on {gguf} did not become healthy")


def forward(handler, url: str, request: dict) -> None:
    """POST ``request`` to the engine at ``url`` + the handler's path; stream the answer back."""
    upstream = urllib.request.Request(
        url + handler.path, json.dumps(request).encode(), {"Content-Type": "application/json"}
    )
    try:
        response = urllib.request.urlopen(upstream, timeout=300)
    except urllib.error.HTTPError as exc:
        response = exc
    with response:
        handler.send_response(response.status)
        handler.send_header(
            "Content-Type", response.headers.get("Content-Type", "application/json")
        )
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for chunk in iter(lambda: response.read1(65536), b""):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
