"""What a model can do reaches the proxy: a chat template that refuses the system role is found
in the model (here: the template the playbook gives it) and written into the routes file, and
the proxy then folds system text into the first user turn for a real request to the real engine.

(llama.cpp's own server also folds system text for such templates, so what the proxy did is
seen on the wire, through a recording tap between the proxy and the engine. The fold matters
for backends that do not, and keeps every backend's answer the same.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
import yaml

from tests.conftest import REPO, free_port, stop_process, wait_http_ok
from tests.test_apply_e2e import Workspace

# Gemma's turns, refusing a system message as Gemma 2's own template does. {% raw %} keeps
# toolkit's playbook variables from rendering it: it is the engine's template, not ours.
STRICT_TEMPLATE = (
    "{% raw %}{{ bos_token }}{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ raise_exception('System role not supported') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\\n' "
    "+ m['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}{% endraw %}"
)


@pytest.fixture(scope="module")
def strict_site(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("strict"), free_port())
    plays = yaml.safe_load(ws.playbook.read_text())
    plays[0]["models"][0]["args"] = {"ctx_size": 2048, "chat_template": STRICT_TEMPLATE}
    ws.playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    ws.first = ws.apply()
    try:
        yield ws
    finally:
        ws.toolkit("down", str(ws.playbook))
        for pid, _ in ws.processes():
            os.kill(pid, signal.SIGKILL)


def test_routes_file_says_the_template_refuses_the_system_role(strict_site):
    assert strict_site.first.returncode == 0, strict_site.first.stdout + strict_site.first.stderr
    routes = yaml.safe_load((strict_site.data / "proxy/routes.yml").read_text())
    assert routes["models"]["gemma-3-270m"]["capabilities"]["system_role"] is False


class Tap:
    """A recording pass-through in front of the real engine: what reached it, byte for byte."""

    def __init__(self, engine: str):
        self.bodies: list[dict] = []
        tap = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                tap.bodies.append(json.loads(body))
                answer = httpx.post(engine + self.path, content=body, timeout=300,
                                    headers={"Content-Type": "application/json"})  # fmt: skip
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def do_GET(self):  # noqa: N802
                answer = httpx.get(engine + self.path, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_proxy_folds_the_system_message_before_the_engine_sees_it(strict_site, tmp_path):
    """The routes toolkit rendered, with the engine behind a recording tap: the engine receives
    the system text inside the first user turn, and no system message."""
    routes = yaml.safe_load((strict_site.data / "proxy/routes.yml").read_text())
    route = routes["models"]["gemma-3-270m"]
    tap = Tap(route["backends"][0]["url"])
    route["backends"][0]["url"] = tap.url
    (tmp_path / "routes.yml").write_text(yaml.safe_dump(routes))
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--routes", str(tmp_path / "routes.yml"), "--port",
         str(port), "--no-access-log"], cwd=REPO, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc=proxy)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        reply = client.chat.completions.create(
            model="gemma",
            messages=[
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Hello!"},
            ],
            max_tokens=4,
            temperature=0,
        )
        assert reply.usage.prompt_tokens > 0
    finally:
        stop_process(proxy)
        tap.server.shutdown()
    sent = [b for b in tap.bodies if "messages" in b]
    assert sent[-1]["messages"] == [{"role": "user", "content": "Answer in French.\n\nHello!"}]


def test_second_apply_renders_the_same_routes(strict_site):
    again = strict_site.apply()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "changed=0" in again.stdout, again.stdout
