"""A small, stateless OpenAI-compatible proxy that routes requests by model to backends.

Run it with ``python -m proxy --routes FILE`` (or ``toolkit proxy``); ``proxy.server.serve`` is
the same from Python.
"""
