"""What a model can take: folding system messages, and a cheap context-length check.

Token estimate: one token per 4 characters of message text (``len(text) // 4``). For English and
code, real tokenizers give 3-4.5 characters a token, so this slightly *under*-counts: the proxy
rejects only prompts that are clearly too long, and leaves the exact limit to the backend. It costs
one pass over the strings, no tokenizer.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "") for part in content if isinstance(part, dict) and "text" in part
        )
    return ""


def fold_system_messages(messages: list[Any]) -> list[Any] | None:
    """Merge system (and developer) messages into the first user message.

    Returns the new list, or None when there was nothing to fold.
    """
    system = [
        m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")
    ]
    if not system:
        return None
    preamble = "\n\n".join(text_of(m.get("content")) for m in system)
    rest = [
        m
        for m in messages
        if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))
    ]
    for index, message in enumerate(rest):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                merged: Any = [{"type": "text", "text": preamble + "\n\n"}, *content]
            else:
                merged = f"{preamble}\n\n{text_of(content)}"
            rest[index] = {**message, "content": merged}
            return rest
    return [{"role": "user", "content": preamble}, *rest]


def estimate_tokens(body: dict[str, Any]) -> int:
    """Cheap estimate of the prompt's tokens (see module docstring)."""
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                chars += len(text_of(message.get("content")))
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):  # a batch: each item is its own prompt
            chars += max((len(item) for item in value if isinstance(item, str)), default=0)
    return chars // CHARS_PER_TOKEN
