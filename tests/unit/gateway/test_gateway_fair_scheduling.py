"""The fair release policy of the gateway's pass scheduler (pure): round-robin across tenants, bounded in
flight per tenant and in all, a tenant's own passes in queue order."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from multipass_gateway.domain.scheduling import PassKey, plan_release


def queue(tenant: str, jobs: int, *, images: int = 1) -> list[PassKey]:
    return [
        PassKey(tenant, f"{job:012x}{'0' * 12}", image, "base", 1)
        for job in range(jobs)
        for image in range(images)
    ]


def tenants_of(released: list[PassKey]) -> list[str]:
    return [key.tenant for key in released]


def test_tenants_take_turns_one_pass_each():
    ready = {"tb": queue("tb", 3), "ta": queue("ta", 3), "tc": queue("tc", 1)}
    released = plan_release(ready, {}, tenant_limit=10, global_limit=100)
    assert tenants_of(released) == ["ta", "tb", "tc", "ta", "tb", "ta", "tb"]


def test_a_tenant_with_many_jobs_cannot_starve_a_tenant_with_one():
    ready = {"ta": queue("ta", 200), "tb": queue("tb", 1)}
    # ta already fills its share of the workers; tb's one pass goes at once.
    released = plan_release(ready, {"ta": 4}, tenant_limit=4, global_limit=8)
    assert released == ready["tb"]
    # With nothing in flight both start, alternating, until ta reaches its bound.
    released = plan_release(ready, {}, tenant_limit=4, global_limit=8)
    assert tenants_of(released) == ["ta", "tb", "ta", "ta", "ta"]


def test_a_tenants_own_limit_replaces_the_setting_for_it_alone():
    ready = {"ta": queue("ta", 10), "tb": queue("tb", 10), "tc": queue("tc", 10)}
    # ta may have 1 in flight, tb 6; tc (0 or absent: the setting) 3; the global bound still holds.
    released = plan_release(
        ready, {}, tenant_limit=3, global_limit=100, own_limits={"ta": 1, "tb": 6, "tc": 0}
    )
    assert Counter(tenants_of(released)) == {"ta": 1, "tb": 6, "tc": 3}
    assert Counter(
        tenants_of(plan_release(ready, {"ta": 1}, tenant_limit=3, global_limit=100, own_limits={"ta": 1}))
    ) == {"tb": 3, "tc": 3}
    assert len(plan_release(ready, {}, tenant_limit=3, global_limit=4, own_limits={"tb": 50})) == 4


def test_the_global_bound_caps_every_round_and_counts_what_is_in_flight():
    ready = {"ta": queue("ta", 10), "tb": queue("tb", 10)}
    assert len(plan_release(ready, {}, tenant_limit=10, global_limit=5)) == 5
    assert tenants_of(plan_release(ready, {"tc": 3}, tenant_limit=10, global_limit=5)) == ["ta", "tb"]
    assert plan_release(ready, {"tc": 5}, tenant_limit=10, global_limit=5) == []


def test_the_turn_starts_after_the_tenant_served_last():
    ready = {"ta": queue("ta", 5), "tb": queue("tb", 5), "tc": queue("tc", 5)}
    assert tenants_of(plan_release(ready, {}, tenant_limit=9, global_limit=2, after="ta")) == ["tb", "tc"]
    assert tenants_of(plan_release(ready, {}, tenant_limit=9, global_limit=2, after="tc")) == ["ta", "tb"]
    # A tenant that no longer has work does not hold the turn.
    assert tenants_of(plan_release(ready, {}, tenant_limit=9, global_limit=1, after="tz")) == ["ta"]


def test_a_tenants_passes_leave_in_queue_order():
    ready = {"ta": queue("ta", 4, images=2)}
    released = plan_release(ready, {}, tenant_limit=3, global_limit=10)
    assert released == ready["ta"][:3]


def test_repeated_rounds_share_the_workers_evenly():
    """Simulate workers that finish the oldest pass in flight each tick: every tenant progresses."""
    ready = {"ta": queue("ta", 60), "tb": queue("tb", 6), "tc": queue("tc", 6)}
    in_flight: list[PassKey] = []
    finished: list[PassKey] = []
    last = None
    while any(ready.values()) or in_flight:
        released = plan_release(
            ready, Counter(k.tenant for k in in_flight), tenant_limit=2, global_limit=3, after=last
        )
        for key in released:
            ready[key.tenant].remove(key)
            in_flight.append(key)
            last = key.tenant
        assert len(in_flight) <= 3
        assert max(Counter(k.tenant for k in in_flight).values()) <= 2
        finished.append(in_flight.pop(0))
    first_18 = Counter(k.tenant for k in finished[:18])
    # tb and tc finish all six of their passes within the first 18, although ta queued 60 first.
    assert first_18["tb"] == 6 and first_18["tc"] == 6


def test_pass_keys_parse_back_and_refuse_what_would_escape_a_kv_token():
    key = PassKey("t0123456789abcdef", "0190aa55bb66cc77dd88ee99", 3, "person-1", 2)
    assert PassKey.parse(key.suffix) == key
    assert key.ready_key == f"sched.ready.{key.suffix}" and key.flight_key == f"sched.flight.{key.suffix}"
    for bad in ("a.b.c.d", "t.j.x.base.1", "t.j.0.base.one", "t.j.0.ba se.1", "t.j.-1.base.1"):
        assert PassKey.parse(bad) is None
    assert not PassKey("t1", "job", 0, "base>", 1).valid


tenant_names = st.sampled_from(["ta", "tb", "tc", "td"])


@given(
    ready_sizes=st.dictionaries(tenant_names, st.integers(0, 30)),
    flying=st.dictionaries(tenant_names, st.integers(0, 6)),
    tenant_limit=st.integers(1, 8),
    global_limit=st.integers(1, 40),
    after=st.one_of(st.none(), tenant_names),
)
def test_bounds_hold_and_the_release_is_work_conserving(
    ready_sizes, flying, tenant_limit, global_limit, after
):
    ready = {tenant: queue(tenant, size) for tenant, size in ready_sizes.items()}
    released = plan_release(ready, flying, tenant_limit=tenant_limit, global_limit=global_limit, after=after)
    counts = Counter(flying) + Counter(tenants_of(released))
    assert len(set(released)) == len(released)
    for tenant, keys in ready.items():
        mine = [k for k in released if k.tenant == tenant]
        assert mine == keys[: len(mine)]  # queue order
        if mine:
            assert counts[tenant] <= max(tenant_limit, flying.get(tenant, 0))
    assert not released or sum(counts.values()) <= max(global_limit, sum(flying.values()))
    # Nothing that could go stays: either the global bound is reached or every tenant is done or full.
    if sum(counts.values()) < global_limit:
        for tenant, keys in ready.items():
            taken = sum(1 for k in released if k.tenant == tenant)
            assert taken == len(keys) or counts[tenant] >= tenant_limit
    # Turns: no tenant gets a second pass while another eligible tenant has had none in this round.
    firsts = {}
    for position, key in enumerate(released):
        firsts.setdefault(key.tenant, position)
    for position, key in enumerate(released):
        if position > firsts[key.tenant]:
            assert all(firsts[t] < position for t in firsts)
