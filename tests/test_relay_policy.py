"""The relay's selection rule (toolkit/relay/policy.py): which source feeds which host."""

from toolkit.relay.policy import WORKSTATION, Source, choose_source, feeds


def sources(*hosts: Source, workstation_slots: int = 1, workstation_streams: int = 0):
    table = {WORKSTATION: Source(WORKSTATION, workstation_slots, workstation_streams, True)}
    table.update({s.name: s for s in hosts})
    return table


def test_the_first_host_takes_the_workstation():
    assert choose_source(sources(), "a").name == WORKSTATION


def test_a_host_is_preferred_over_the_workstation_once_one_exists():
    table = sources(Source("a", 1, upstream=WORKSTATION))
    assert choose_source(table, "b").name == "a"


def test_the_workstation_feeds_at_most_its_slots_then_hosts_wait():
    table = sources(workstation_streams=1)
    assert choose_source(table, "a") is None
    table = sources(workstation_slots=2, workstation_streams=1)
    assert choose_source(table, "a").name == WORKSTATION


def test_a_full_host_is_skipped_and_the_chain_grows():
    table = sources(
        Source("a", 1, streams=1, upstream=WORKSTATION, order=0),
        Source("b", 1, upstream="a", order=1),
        workstation_streams=1,
    )
    assert choose_source(table, "c").name == "b"


def test_a_complete_host_before_a_receiving_one_then_the_nearest_the_root():
    table = sources(
        Source("late", 1, order=5, complete=True),
        Source("early", 1, order=1, upstream=WORKSTATION),
        Source("earlier", 1, order=0, upstream=WORKSTATION),
    )
    assert choose_source(table, "x").name == "late"
    table["late"].streams = 1
    assert choose_source(table, "x").name == "earlier"


def test_dead_and_refused_sources_are_never_taken():
    table = sources(Source("a", 1, dead=True), Source("b", 1))
    assert choose_source(table, "c", refused={"b"}).name == WORKSTATION
    assert choose_source(table, "c", refused={"b", WORKSTATION}) is None


def test_a_host_never_takes_a_source_it_feeds():
    # a <- b <- c: when a must start over, neither b nor c may feed it (each waits on a)
    table = sources(
        Source("a", 1, streams=1, order=0),
        Source("b", 1, streams=1, upstream="a", order=1),
        Source("c", 1, upstream="b", order=2),
        workstation_streams=1,
    )
    assert feeds(table, "c", "a") and feeds(table, "b", "a") and not feeds(table, "a", "c")
    assert choose_source(table, "a") is None
    table[WORKSTATION].streams = 0
    assert choose_source(table, "a").name == WORKSTATION


def test_a_host_that_cannot_relay_takes_only_the_workstation():
    table = sources(Source("a", 1, complete=True))
    assert choose_source(table, "b", hosts_allowed=False).name == WORKSTATION
    table[WORKSTATION].streams = 1
    assert choose_source(table, "b", hosts_allowed=False) is None


def test_a_host_is_not_its_own_source():
    table = sources(Source("a", 1, complete=True), workstation_streams=1)
    assert choose_source(table, "a") is None
