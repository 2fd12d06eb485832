"""Traffic counters stay bounded however many namespaces clients invent."""

from cached.traffic import MAX_TRACKED_NAMESPACES, OTHER, Traffic


def test_namespaces_past_the_cap_are_counted_together():
    traffic = Traffic()
    for i in range(MAX_TRACKED_NAMESPACES + 500):
        traffic.add_lookup(f"ns-{i}", hits=1, missed=True)
    rows = traffic.namespaces({})
    assert len(rows) == MAX_TRACKED_NAMESPACES
    other = next(row for row in rows if row.namespace == OTHER)
    assert (other.lookups, other.hits, other.misses) == (1000, 500, 500)
    assert traffic.totals()["lookups"] == 2 * (MAX_TRACKED_NAMESPACES + 500)
    restored = Traffic()
    restored.load(traffic.dump())
    assert len(restored.dump()) == len(traffic.dump())


def test_the_stats_answer_keeps_the_busiest_namespaces():
    traffic = Traffic()
    traffic.add_lookup("busy", hits=5, missed=False)
    records = {f"team-{i}": 1 for i in range(MAX_TRACKED_NAMESPACES + 10)}
    rows = traffic.namespaces(records)
    assert len(rows) == MAX_TRACKED_NAMESPACES
    assert "busy" in {row.namespace for row in rows}
    assert [row.namespace for row in rows] == sorted(row.namespace for row in rows)
