"""LlamaEdge's prompt templates, and which one fits a GGUF's chat template.

LlamaEdge formats chat prompts itself, by name (``--prompt-template``); it does not read the
chat template a GGUF carries. ``choose`` maps the markers of that template to LlamaEdge's name,
checking them in the order llama.cpp's own template detection does (``llm_chat_detect_template``);
the mapping to LlamaEdge's names is ours. ``None`` means nothing matched: the playbook must name
the template.
"""

from __future__ import annotations

# llama-api-server 0.28.1, `--prompt-template` possible values.
LLAMAEDGE_TEMPLATES = (
    "llama-2-chat", "llama-3-chat", "llama-3-tool", "llama-4-chat", "mistral-instruct",
    "mistral-tool", "mistrallite", "mistral-small-chat", "mistral-small-tool", "openchat",
    "codellama-instruct", "codellama-super-instruct", "human-assistant", "vicuna-1.0-chat",
    "vicuna-1.1-chat", "vicuna-llava", "chatml", "chatml-tool", "chatml-think", "internlm-2-tool",
    "baichuan-2", "wizard-coder", "zephyr", "stablelm-zephyr", "intel-neural", "deepseek-chat",
    "deepseek-coder", "deepseek-chat-2", "deepseek-chat-25", "deepseek-chat-3", "solar-instruct",
    "phi-2-chat", "phi-2-instruct", "phi-3-chat", "phi-3-instruct", "phi-4-chat",
    "gemma-instruct", "gemma-3", "octopus", "glm-4-chat", "groq-llama3-tool", "mediatek-breeze",
    "nemotron-chat", "nemotron-tool", "functionary-32", "functionary-31", "minicpmv",
    "moxin-chat", "moxin-instruct", "falcon3", "megrez", "qwen2-vision", "qwen3-no-think",
    "qwen3-agent", "exaone-deep-chat", "exaone-chat", "seed-instruct", "seed-reasoning",
    "seed-oss-think", "seed-oss-no-think", "smol-vision", "smol3-no-think", "gpt-oss",
    "embedding", "tts", "none",
)  # fmt: skip

EMBEDDING_ARCHITECTURES = ("bert", "nomic-bert", "jina-bert-v2", "t5encoder")

# (markers that must all be in the template, LlamaEdge's name), first match wins.
MARKERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<|im_start|>", "<|im_sep|>"), "phi-4-chat"),
    (("<|im_start|>",), "chatml"),
    (("[INST]", "<<SYS>>"), "llama-2-chat"),
    (("[INST]",), "mistral-instruct"),
    (("<|assistant|>", "<|end|>"), "phi-3-chat"),
    (("<|assistant|>", "<|user|>", "</s>"), "falcon3"),
    (("<|user|>", "<|endoftext|>"), "zephyr"),
    (("<start_of_turn>",), "gemma-instruct"),
    (("<|start_header_id|>", "<|end_header_id|>"), "llama-3-chat"),
    (("<|header_start|>",), "llama-4-chat"),
    (("<｜Assistant｜>", "<｜User｜>", "<｜end▁of▁sentence｜>"), "deepseek-chat-3"),
    (("<|start|>", "<|channel|>"), "gpt-oss"),
)


def choose(chat_template: str | None, architecture: str) -> str | None:
    """LlamaEdge's template for a GGUF with this chat template and architecture, or None."""
    if architecture in EMBEDDING_ARCHITECTURES:
        return "embedding"
    if not chat_template:
        return None
    for markers, name in MARKERS:
        if all(marker in chat_template for marker in markers):
            if name == "gemma-instruct" and architecture == "gemma3":
                return "gemma-3"
            return name
    return None
