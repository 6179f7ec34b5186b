"""What a model can do reaches the proxy: a chat template that refuses the system role is found
in the model (here: the template the playbook gives it) and written into the routes file, and
the proxy then folds system text into the first user turn for a real request to the real engine.
"""

from __future__ import annotations

import os
import signal

import httpx
import openai
import pytest
import yaml

from tests.conftest import free_port
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


def test_the_engine_refuses_a_system_message_and_the_proxy_folds_it(strict_site):
    routes = yaml.safe_load((strict_site.data / "proxy/routes.yml").read_text())
    engine = routes["models"]["gemma-3-270m"]["backends"][0]["url"]
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello!"},
    ]
    direct = httpx.post(
        f"{engine}/v1/chat/completions",
        json={"model": "gemma-3-270m", "messages": messages, "max_tokens": 8},
        timeout=120,
    )
    assert direct.status_code >= 400, direct.text  # the template itself refuses it
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{strict_site.port}/v1", api_key="none")
    reply = client.chat.completions.create(
        model="gemma", messages=messages, max_tokens=8, temperature=0
    )
    assert reply.choices[0].message is not None
    assert reply.usage.prompt_tokens > 0


def test_second_apply_renders_the_same_routes(strict_site):
    again = strict_site.apply()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "changed=0" in again.stdout, again.stdout
