"""Choosing among backends: free slot first, then fewest in flight; resting after failures."""

from __future__ import annotations

from proxy.backends import Backend, candidates, retry_after


def test_fewest_in_flight_first():
    a, b, c = (
        Backend("http://a", "openai"),
        Backend("http://b", "openai"),
        Backend("http://c", "openai"),
    )
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert candidates([a, b, c], now=0.0) == [b, c, a]


def test_free_llamacpp_slot_first():
    busy, free = Backend("http://busy", "llamacpp"), Backend("http://free", "llamacpp")
    busy.slots, busy.in_flight = 2, 2  # every slot taken: a new request would queue
    free.slots, free.in_flight = 8, 5
    assert candidates([busy, free], now=0.0) == [free, busy]


def test_failed_backend_rests_then_is_tried_again():
    backend = Backend("http://a", "llamacpp")
    backend.mark_down(now=100.0)
    assert candidates([backend], now=100.5) == []
    assert retry_after([backend], now=100.5) == 1
    assert candidates([backend], now=101.0) == [backend]  # cool-off over: one more try
    backend.mark_down(now=101.0)  # failed again: rests twice as long
    assert candidates([backend], now=102.5) == []
    assert candidates([backend], now=103.0) == [backend]
    backend.mark_up()
    assert backend.healthy and backend.failures == 0


def test_models_on_one_server_share_its_backend_across_reloads(tmp_path):
    from proxy.table import load_table

    routes = tmp_path / "routes.yml"
    routes.write_text(
        "models:\n"
        "  a: {backends: [{url: 'http://127.0.0.1:11434', runtime: ollama}]}\n"
        "  b: {backends: [{url: 'http://127.0.0.1:11434', runtime: ollama, model: 'b:1b'}]}\n"
    )
    table = load_table(routes)
    shared = table.targets["a"].backends[0]
    assert table.targets["b"].backends[0] is shared
    assert table.targets["b"].backend_models == {"http://127.0.0.1:11434": "b:1b"}
    shared.in_flight = 3
    reloaded = load_table(routes, pool=table.backends)
    assert reloaded.targets["a"].backends[0] is shared  # health and load survive a reload


def test_a_backend_out_of_its_cool_off_comes_after_the_healthy_ones():
    resting, busy = Backend("http://resting", "openai"), Backend("http://busy", "openai")
    resting.mark_down(now=100.0)
    busy.in_flight = 7
    assert candidates([resting, busy], now=100.5) == [busy]  # still resting
    assert candidates([resting, busy], now=102.0) == [busy, resting]  # idle, but unproven
