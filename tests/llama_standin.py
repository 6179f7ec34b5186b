#!/usr/bin/env python3
"""A stand-in for ``llama-server``: no model is run, a canned answer is served.

The fleet tests and benchmark converge many SSH hosts on one small machine, where a real engine
per host would be too heavy. This stand-in takes llama-server's flags (``-m``, ``--host``,
``--port``, ``--alias``, ``-c``, ``-np``, ``--chat-template``, ``--metrics`` and the rest) and
speaks just enough of its HTTP API: ``/health`` (200), ``/v1/models``, ``/v1/chat/completions``
(also streamed) and ``/v1/completions``. It is a stand-in, not an engine: the real engine is
tested by tests/test_apply_e2e.py. Standard library only, so any host's ``python3`` can run it.

``--version`` prints a llama-server-like version line, as toolkit's facts probe asks for one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "Hello from the stand-in."


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="llama-server (stand-in)")
    parser.add_argument("--version", action="store_true")
    parser.add_argument("-m", "--model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("-a", "--alias")
    parser.add_argument("-c", "--ctx-size", type=int, default=0)
    parser.add_argument("-np", "--parallel", type=int, default=1)
    parser.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1)
    parser.add_argument("-t", "--threads", type=int, default=0)
    parser.add_argument("--chat-template")
    parser.add_argument("--jinja", action="store_true")
    parser.add_argument("--embedding", "--embeddings", action="store_true")
    parser.add_argument("--metrics", action="store_true")
    args, _unknown = parser.parse_known_args(argv)  # other llama-server flags are ignored
    return args


def make_handler(model: str, model_path: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args) -> None:  # quiet: supervisord keeps stdout as the log
            pass

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path in ("/v1/models", "/models"):
                self._json(200, {"object": "list", "data": [
                    {"id": model, "object": "model", "owned_by": "llamacpp",
                     "meta": {"path": model_path}},
                ]})  # fmt: skip
            elif self.path == "/metrics":
                data = b"llamacpp:requests_processing 0\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self._json(404, {"error": {"message": "not found", "code": 404}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._json(400, {"error": {"message": "invalid JSON", "code": 400}})
                return
            usage = {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}
            created = int(time.time())
            if self.path in ("/v1/chat/completions", "/chat/completions"):
                if body.get("stream"):
                    self._stream(created)
                    return
                self._json(200, {
                    "id": "chatcmpl-standin", "object": "chat.completion", "created": created,
                    "model": model, "usage": usage,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": ANSWER}}],
                })  # fmt: skip
            elif self.path in ("/v1/completions", "/completions"):
                self._json(200, {
                    "id": "cmpl-standin", "object": "text_completion", "created": created,
                    "model": model, "usage": usage,
                    "choices": [{"index": 0, "finish_reason": "stop", "text": " " + ANSWER}],
                })  # fmt: skip
            else:
                self._json(404, {"error": {"message": "not found", "code": 404}})

        def _stream(self, created: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            words = ANSWER.split(" ")
            for i, word in enumerate(words):
                delta = {"content": word if i == 0 else " " + word}
                if i == 0:
                    delta["role"] = "assistant"
                chunk = {"id": "chatcmpl-standin", "object": "chat.completion.chunk",
                         "created": created, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            last = {"id": "chatcmpl-standin", "object": "chat.completion.chunk",
                    "created": created, "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}  # fmt: skip
            self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

    return Handler


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        print("version: 0 (stand-in)")
        return 0
    if not args.model or not os.path.isfile(args.model):
        print(f"error: model file {args.model!r} not found", file=sys.stderr)
        return 1
    model = args.alias or os.path.basename(args.model)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(model, args.model))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"stand-in llama-server for {model} on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
