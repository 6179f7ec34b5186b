#!/usr/bin/env python3
"""A stand-in for the ``wasmedge`` executable running LlamaEdge's ``llama-api-server.wasm``.

WasmEdge and LlamaEdge cannot be downloaded on the test machines, so tests/runtime_releases.py
packs this file as ``bin/wasmedge`` into an archive laid out like WasmEdge's release, and builds
a stand-in ``llama-api-server.wasm`` (a valid wasm module whose custom section
``llamaedge-standin`` names the program and its version). toolkit installs them through its real
``release`` path. It is a stand-in, not WasmEdge: it fails and answers as the documented ones do.

- ``wasmedge --version``: ``wasmedge version X``;
- ``wasmedge --help``: its options, ``--nn-preload`` among them only when the wasi_nn plugin
  loaded (WasmEdge adds a plugin's options to its command line when it loads the plugin);
- ``lib/libwasmedge.so.0`` must be there, as the dynamic loader would insist;
- the ``wasi_nn`` plugin (``libwasmedgePluginWasiNN.so``) is looked up in ``$WASMEDGE_PLUGIN_PATH``
  then ``<prefix>/plugin``; one that is missing or built for another WasmEdge version is not
  loaded, and ``--nn-preload`` is then ``unknown option: nn-preload`` (LlamaEdge #284);
- ``wasmedge --dir .:. --nn-preload default:GGML:AUTO:<gguf> llama-api-server.wasm
  --model-name M --prompt-template T --ctx-size N --socket-addr 127.0.0.1:P`` serves ``/echo``,
  ``/v1/info``, ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` (``--port``
  alone binds 0.0.0.0, as LlamaEdge does); answers are real tokens from llama.cpp (xllamacpp).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "0.0.0"  # replaced when the release archive is built
PLUGIN = "libwasmedgePluginWasiNN.so"
PREFIX = Path(__file__).resolve().parent.parent
PROMPT_TEMPLATES = (  # noqa: SIM905 - the list as LlamaEdge's README prints it
    "llama-2-chat llama-3-chat llama-3-tool llama-4-chat mistral-instruct mistral-tool mistrallite "
    "mistral-small-chat mistral-small-tool openchat codellama-instruct codellama-super-instruct "
    "human-assistant vicuna-1.0-chat vicuna-1.1-chat vicuna-llava chatml chatml-tool chatml-think "
    "internlm-2-tool baichuan-2 wizard-coder zephyr stablelm-zephyr intel-neural deepseek-chat "
    "deepseek-coder deepseek-chat-2 deepseek-chat-25 deepseek-chat-3 solar-instruct phi-2-chat "
    "phi-2-instruct phi-3-chat phi-3-instruct phi-4-chat gemma-instruct gemma-3 octopus "
    "glm-4-chat groq-llama3-tool mediatek-breeze nemotron-chat nemotron-tool functionary-32 "
    "functionary-31 minicpmv moxin-chat moxin-instruct falcon3 megrez qwen2-vision qwen3-no-think "
    "qwen3-agent exaone-deep-chat exaone-chat seed-instruct seed-reasoning seed-oss-think "
    "seed-oss-no-think smol-vision smol3-no-think gpt-oss embedding tts none"
).split()


def fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr, flush=True)
    return code


def wasi_nn_loaded() -> bool:
    """Is a wasi_nn plugin of this WasmEdge's version found where WasmEdge looks?"""
    dirs = [d for d in os.environ.get("WASMEDGE_PLUGIN_PATH", "").split(":") if d]
    dirs.append(str(PREFIX / "plugin"))
    for folder in dict.fromkeys(os.path.realpath(d) for d in dirs):  # each folder once
        plugin = Path(folder) / PLUGIN
        if plugin.is_file():
            marker = plugin.read_bytes().decode(errors="replace").strip()
            built_for = marker.rsplit(" ", 1)[-1]
            if built_for == VERSION:
                return True
            print(
                f"[error] Plugin: {plugin}: built for WasmEdge {built_for}, its API version is "
                f"not match to current version {VERSION}",
                file=sys.stderr,
            )
    return False


def wasm_program(path: str) -> dict | None:
    """The stand-in program a wasm module names in its ``llamaedge-standin`` custom section."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if data[:8] != b"\0asm\x01\0\0\0":
        return None
    pos = 8
    while pos < len(data):
        section, pos = data[pos], pos + 1
        size, pos = _leb(data, pos)
        end = pos + size
        if section == 0:
            name_len, at = _leb(data, pos)
            if data[at : at + name_len] == b"llamaedge-standin":
                return json.loads(data[at + name_len : end])
        pos = end
    return None


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def main(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["-v"]):
        print(f"wasmedge version {VERSION}")
        return 0
    if not (PREFIX / "lib" / "libwasmedge.so.0").exists():
        return fail(
            "wasmedge: error while loading shared libraries: libwasmedge.so.0: "
            "cannot open shared object file: No such file or directory",
            127,
        )
    nn = wasi_nn_loaded()
    if argv[:1] in (["--help"], ["-h"]):
        options = ["--dir", "--env", "--reactor", "--enable-all"]
        print("USAGE\n\twasmedge [OPTIONS] [--] WASM_OR_SO [ARG ...]\n\nOPTIONS")
        print("\n".join(f"\t{o}" for o in options + (["--nn-preload"] if nn else [])))
        return 0
    preloads, envs, i = [], {}, 0
    while i < len(argv) and argv[i].startswith("--"):
        option = argv[i][2:]
        if option == "nn-preload" and not nn:
            return fail("unknown option: nn-preload")
        if option not in ("dir", "nn-preload", "env") or i + 1 >= len(argv):
            return fail(f"unknown option: {option}")
        value = argv[i + 1]
        if option == "nn-preload":
            preloads.append(value)
        elif option == "env":
            key, _, val = value.partition("=")
            envs[key] = val
        i += 2
    if i >= len(argv):
        return fail("wasmedge: no wasm file given")
    wasm, program_args = argv[i], argv[i + 1 :]
    program = wasm_program(wasm)
    if program is None:
        return fail(f"[error] loading failed: magic header not detected, path: {wasm}")
    if program.get("program") != "llama-api-server":
        return fail(f"stand-in program {program!r} is not known")
    return llama_api_server(program["version"], program_args, preloads)


def llama_api_server(version: str, argv: list[str], preloads: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="llama-api-server")
    parser.add_argument("-m", "--model-name", default="default")
    parser.add_argument("-a", "--model-alias", default="default,embedding")
    parser.add_argument("-p", "--prompt-template", required=True)
    parser.add_argument("-c", "--ctx-size", default="4096,384")
    parser.add_argument("-b", "--batch-size", default="512,512")
    parser.add_argument("-u", "--ubatch-size", default="512,512")
    parser.add_argument("-g", "--n-gpu-layers", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-n", "--n-predict", type=int, default=-1)
    parser.add_argument("--temp", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repeat-penalty", type=float)
    parser.add_argument("--include-usage", action="store_true")
    parser.add_argument("--no-mmap", action="store_true")
    parser.add_argument("--web-ui", default="chatbot-ui")
    address = parser.add_mutually_exclusive_group()
    address.add_argument("--socket-addr")
    address.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    template = args.prompt_template.split(",")[0]
    if template not in PROMPT_TEMPLATES:
        return fail(
            f"error: invalid value '{template}' for '--prompt-template <PROMPT_TEMPLATE>'", 2
        )
    aliases = args.model_alias.split(",")
    models = {}
    for preload in preloads:
        parts = preload.split(":", 3)
        if len(parts) != 4 or parts[1] != "GGML":
            return fail(f"[error] nn-preload: invalid value {preload!r}")
        if not Path(parts[3]).is_file():
            return fail(f"[error] nn-preload: cannot open {parts[3]}")
        models[parts[0]] = parts[3]
    if aliases[0] not in models:
        return fail(f"[error] The model alias {aliases[0]!r} is not preloaded (--nn-preload)")
    if args.socket_addr:
        host, _, port = args.socket_addr.rpartition(":")
    else:
        host, port = "0.0.0.0", str(args.port or 8080)

    sys.path.insert(0, str(PREFIX / "lib"))
    from standin_engine import CHATML, GEMMA, forward, start_engine

    chat_template = {"gemma-instruct": GEMMA, "gemma-3": GEMMA, "chatml": CHATML}.get(template, "")
    ctx = int(args.ctx_size.split(",")[0])
    name = args.model_name.split(",")[0]
    engine = start_engine(models[aliases[0]], name, ctx, chat_template)
    info = {
        "server_info": {"type": "llama-api-server", "version": version,
                        "plugin_version": f"b0000 (stand-in, wasmedge {VERSION})",
                        "port": port},
        "chat_model": {"name": name, "type": "chat", "ctx_size": ctx, "prompt_template": template},
    }  # fmt: skip
    created = int(time.time())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args) -> None:
            sys.stderr.write(f"[INFO] {self.command} {self.path}\n")

        def reply(self, status: int, body: object) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/echo":
                return self.reply(200, b"echo test")
            if self.path == "/v1/info":
                return self.reply(200, info)
            if self.path == "/v1/models":
                card = {"id": name, "created": created, "object": "model",
                        "owned_by": "Not specified"}  # fmt: skip
                return self.reply(200, {"object": "list", "data": [card]})
            self.reply(404, b"404 Not Found")

        def do_POST(self) -> None:
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                return self.reply(404, b"404 Not Found")
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                request = json.loads(raw)
            except ValueError:
                return self.reply(400, {"error": "Fail to deserialize chat completion request"})
            request["model"] = name
            forward(self, engine, request)

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    print(f"[INFO] llama-api-server {version} (stand-in) listening on {host}:{port}", flush=True)
    from standin_engine import stop_engines

    def stop(*_: object) -> None:
        stop_engines()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
