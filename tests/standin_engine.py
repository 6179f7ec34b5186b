"""The real llama.cpp engine behind the Ollama and LlamaEdge stand-ins, so they serve real tokens.

tests/runtime_releases.py copies this file into the stand-in release archives (beside the
stand-in executables, under ``lib/``). ``start_engine`` runs llama.cpp's own HTTP server from the
``xllamacpp`` wheel in a child process on a free loopback port (as Ollama runs its bundled
``lib/ollama/llama-server``; in-process, loading a model would stall the stand-in's own HTTP
answers), and ``forward`` passes an OpenAI request to it and streams the answer back unchanged.
``stop_engines`` ends the children. Standard library plus xllamacpp.

Run as a program (the child): ``standin_engine.py GGUF ALIAS PORT CTX_SIZE [CHAT_TEMPLATE]``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

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

_CHILDREN: list[subprocess.Popen] = []
# Children are spawned from this one long-lived thread: the kernel's parent-death signal fires
# when the spawning *thread* ends, and request threads end with their connection.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-spawner")


def start_engine(gguf: str, alias: str, ctx_size: int = 2048, chat_template: str = "") -> str:
    """Start llama.cpp on ``gguf`` in a child process; its base URL once /health answers 200."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [sys.executable, __file__, gguf, alias, str(port), str(ctx_size), chat_template]
    child = _SPAWNER.submit(
        subprocess.Popen, argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
    ).result()
    _CHILDREN.append(child)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1800):  # bounded: at most ~3 minutes on a busy machine
        if child.poll() is not None:
            raise RuntimeError(f"llama.cpp engine on {gguf} exited with {child.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return url
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"llama.cpp engine on {gguf} did not become healthy")


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when the stand-in dies, however it dies."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_engines() -> None:
    for child in _CHILDREN:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


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


def serve(gguf: str, alias: str, port: int, ctx_size: int, chat_template: str) -> None:
    """The child: llama.cpp's server on 127.0.0.1:port until its parent stops it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_ctx = ctx_size
    params.model_alias = {alias}
    # One thread: llama.cpp's threads spin while they wait for each other, which on a shared
    # 2-core test machine under load costs far more than the second thread gains.
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    if chat_template:
        params.chat_template = chat_template
        params.use_jinja = True
    server = xllamacpp.Server(params)  # noqa: F841 - serves from its own threads
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    os._exit(0)  # the native server has no clean stop


if __name__ == "__main__":
    gguf, alias, port, ctx, template = (sys.argv[1:] + [""])[:5]
    serve(gguf, alias, int(port), int(ctx), template)
