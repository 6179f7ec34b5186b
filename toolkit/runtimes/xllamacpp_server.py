"""A ``llama-server`` look-alike on top of the prebuilt ``xllamacpp`` wheel.

toolkit's ``pip`` install strategy puts the ``xllamacpp`` wheel (llama.cpp's own HTTP server,
compiled) into a virtualenv on the host and copies this file next to it. It accepts the usual
llama-server flags, so service definitions are the same whichever way llama.cpp was installed.

This file runs on the target host with only ``xllamacpp`` available: standard library only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

# xllamacpp takes a chat template's text, not llama-server's built-in names; these stand in for the
# names playbooks use. Gemma's turns have no system role: system text is folded into the first
# user turn, as Google's own template does.
BUILTIN_CHAT_TEMPLATES = {
    "gemma": (
        "{{- bos_token -}}"
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        "{%- set ns.system = ns.system + message['content'] + '\\n\\n' -%}"
        "{%- else -%}"
        "{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' -}}"
        "{%- if message['role'] != 'assistant' -%}{{- ns.system -}}{%- set ns.system = '' -%}"
        "{%- endif -%}"
        "{{- message['content'] | trim + '<end_of_turn>\\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
    ),
    "chatml": (
        "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    ),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llama-server (xllamacpp)",
        description="llama.cpp HTTP server from the xllamacpp wheel, with llama-server's flags.",
    )
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("-c", "--ctx-size", type=int, default=0)
    parser.add_argument("-np", "--parallel", type=int, default=1)
    parser.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=-1)
    parser.add_argument("-t", "--threads", type=int, default=0)
    parser.add_argument("-a", "--alias", default=None)
    parser.add_argument("--jinja", action="store_true")
    parser.add_argument("--chat-template", default=None)
    parser.add_argument("--embedding", "--embeddings", action="store_true")
    parser.add_argument("--pooling", choices=["none", "mean", "cls", "last", "rank"])
    parser.add_argument("--metrics", action="store_true")
    parser.add_argument("--api-key", default=None)
    return parser.parse_args(argv)


def build_params(args: argparse.Namespace):
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_gpu_layers = args.n_gpu_layers
    if args.ctx_size:
        params.n_ctx = args.ctx_size
    if args.threads:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.alias:
        params.model_alias = {args.alias}
    if args.jinja:
        params.use_jinja = True
    if args.chat_template:
        params.chat_template = BUILTIN_CHAT_TEMPLATES.get(args.chat_template, args.chat_template)
        params.use_jinja = True
    if args.embedding:
        params.embedding = True
    if args.pooling:
        params.pooling_type = getattr(
            xllamacpp.llama_pooling_type, f"LLAMA_POOLING_TYPE_{args.pooling.upper()}"
        )
    if args.metrics:
        params.endpoint_metrics = True
    if args.api_key:
        params.api_keys = [args.api_key]
    return params


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Block the stop signals before the server's threads start, so they all inherit the mask and
    # this thread alone receives them.
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    import xllamacpp

    server = xllamacpp.Server(build_params(args))
    print(f"listening on {server.listening_address}", flush=True)
    received = signal.sigwait(stop_signals)
    print(f"stopping on signal {signal.Signals(received).name}", flush=True)
    # The native server has no clean stop from Python; leave without running its destructors.
    os._exit(0)


if __name__ == "__main__":
    main()
