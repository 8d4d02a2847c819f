"""The incrementally maintained ledger (LiveLedger) against today's path, rebuilt per call.

The claim: placing one replica per call on a LiveLedger — with claims released and
workers changed in between — gives exactly the placement that building a fresh
Ledger and Placer from the same cluster snapshot gives, and its bookkeeping equals
a ledger rebuilt from scratch. Checked on random clusters, requests and event
sequences (hypothesis), plus a few cases by hand.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.core.placement import ClusterSnapshot, Ledger, LiveLedger, Unplaceable, WorkerSnapshot, place
from gpufleet.core.placement_spec import Placement
from tests.unit.test_placement import M7, linear_estimator, model, req
from tests.unit.test_placement_properties import clusters, requests

GiB = 1 << 30


def state(ledger: Ledger) -> dict[str, object]:
    """Everything placement reads from a ledger, in comparable form."""
    out: dict[str, object] = {}
    for name, w in sorted(ledger.workers.items()):
        out[name] = (w.ready, w.ram_free, w.gpu_claimed, dict(w.replicas), dict(w.sources),
                     [(g.index, g.free, g.claims, g.exclusive, dict(g.holders)) for g in w.gpus])
    return out


def fresh(live: LiveLedger) -> Ledger:
    return Ledger(live.snapshot())


def comparable(r: Placement | Unplaceable) -> object:
    return r.model_dump() if isinstance(r, Placement) else r.reasons


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_at_a_time_on_a_live_ledger_equals_rebuilding_per_call(data: st.DataObject) -> None:
    cluster = data.draw(clusters())
    live = LiveLedger(cluster, linear_estimator)
    reqs = [data.draw(requests(cluster)) for _ in range(2)]
    reqs = [r.__class__(**{**vars(r), "deployment": f"d{i}"}) for i, r in enumerate(reqs)]
    placed: list[int] = []
    for step in range(data.draw(st.integers(1, 30))):
        action = data.draw(st.sampled_from(("place", "place", "release", "ready")))
        if action == "release" and placed:
            live.release(placed.pop(data.draw(st.integers(0, len(placed) - 1))))
        elif action == "ready" and cluster.workers:
            w = data.draw(st.sampled_from(cluster.workers))
            live.set_ready(w.name, data.draw(st.booleans()))
        else:
            request = reqs[data.draw(st.integers(0, 1))]
            expected = place(live.snapshot(), request, linear_estimator)  # today's path: rebuild everything
            got = live.place(request, step)
            assert comparable(got) == comparable(expected)
            if isinstance(got, Placement):
                placed.append(step)
        assert state(live.ledger) == state(fresh(live))


def test_release_is_the_inverse_of_apply() -> None:
    """Four 4.5 GiB replicas, two deployments, then every claim released: the ledger is the empty one."""
    cluster = ClusterSnapshot.model_validate({"workers": [
        {"name": "a", "memory_total": 64 * GiB, "gpus": [{"index": 0, "memory_total": 24 * GiB}]},
        {"name": "b", "memory_total": 64 * GiB, "gpus": [{"index": 0, "memory_total": 24 * GiB},
                                                         {"index": 1, "memory_total": 16 * GiB}]}]})
    live = LiveLedger(cluster, linear_estimator)
    empty = state(live.ledger)
    for i in range(4):
        assert isinstance(live.place(req(M7, name=f"d{i % 2}"), i), Placement)
    assert state(live.ledger) != empty
    for i in range(4):
        live.release(i)
    assert state(live.ledger) == empty
    assert live.release(0) is None  # releasing twice is harmless


def test_a_release_makes_room_for_the_next_call() -> None:
    """One 24 GiB GPU, 20 GiB replicas (20 + 0.5): the second does not fit until the first is released."""
    cluster = ClusterSnapshot.model_validate({"workers": [
        {"name": "a", "memory_total": 64 * GiB, "gpus": [{"index": 0, "memory_total": 24 * GiB}]}]})
    live = LiveLedger(cluster, linear_estimator)
    big = req(model(20, 1))
    assert isinstance(live.place(big, 1), Placement)
    assert isinstance(live.place(big, 2), Unplaceable)
    live.release(1)
    p = live.place(big, 3)
    assert isinstance(p, Placement) and p.vram_claim == {0: int(20.5 * GiB)}


def test_workers_joining_leaving_and_changing() -> None:
    """A new worker is used at once; a worker that stops being ready is not; a replaced worker
    keeps the claims held on it (its 24 GiB card grows to 48: 48 − 4.5 = 43.5 GiB free)."""
    live = LiveLedger(ClusterSnapshot(), linear_estimator)
    assert isinstance(live.place(req(M7), 1), Unplaceable)  # no workers yet
    a = WorkerSnapshot.model_validate({"name": "a", "memory_total": 64 * GiB,
                                       "gpus": [{"index": 0, "memory_total": 24 * GiB}]})
    live.put_worker(a)
    p = live.place(req(M7), 2)
    assert isinstance(p, Placement) and p.worker == "a"
    live.set_ready("a", False)
    assert isinstance(live.place(req(M7), 3), Unplaceable)
    live.set_ready("a", True)
    live.put_worker(a.model_copy(update={"gpus": [a.gpus[0].model_copy(update={"memory_total": 48 * GiB})]}))
    assert live.ledger.workers["a"].gpus[0].free == int(43.5 * GiB)
    assert state(live.ledger) == state(fresh(live))
    live.remove_worker("a")
    assert isinstance(live.place(req(M7), 4), Unplaceable)


def test_a_trimmed_change_log_rebuilds_the_placers_index() -> None:
    """Placer P1 is left behind while 5,000 claims come and go; the log is trimmed past it, and its
    next call must still see every change (it rebuilds its index instead of reading the log)."""
    cluster = ClusterSnapshot.model_validate({"workers": [
        {"name": f"w{i}", "memory_total": 64 * GiB, "gpus": [{"index": 0, "memory_total": 24 * GiB}]}
        for i in range(4)]})
    live = LiveLedger(cluster, linear_estimator)
    first, other = req(M7, name="first"), req(model(8, 1), name="other")
    assert isinstance(live.place(first, "f0"), Placement)
    for i in range(2500):
        live.place(other, i)
        live.release(i)
    for i in range(4):  # the other deployment now holds 8.5 GiB on every GPU
        live.place(other, 10_000 + i)
    assert live.ledger.log_base > 0  # trimmed
    got = live.place(first, "f1")
    assert comparable(got) == comparable(place(live.snapshot().model_copy(update={"claims": [
        c for k, c in live.claims.items() if k != "f1"]}), first, linear_estimator))


def test_sync_workers_applies_only_what_changed() -> None:
    """A fresh read of the same workers changes nothing (placers stay valid); a readiness flip, a
    new GPU size and a departed worker are applied, and the result equals a rebuilt ledger."""
    snap = ClusterSnapshot.model_validate({"workers": [
        {"name": n, "memory_total": 64 * GiB, "gpus": [{"index": 0, "memory_total": 24 * GiB}]} for n in "abc"]})
    live = LiveLedger(snap, linear_estimator)
    assert isinstance(live.place(req(M7), 1), Placement)
    topology = live.ledger.topology
    again = ClusterSnapshot.model_validate(snap.model_dump())  # equal, not the same objects
    assert live.sync_workers(again.workers) == 0 and live.ledger.topology == topology
    a, b, _ = again.workers
    new = [a.model_copy(update={"ready": False}),
           b.model_copy(update={"gpus": [b.gpus[0].model_copy(update={"memory_total": 48 * GiB})]})]
    assert live.sync_workers(new) == 3  # a unready, b replaced, c gone
    assert state(live.ledger) == state(fresh(live))
    p = live.place(req(M7), 2)
    assert isinstance(p, Placement) and p.worker == "b"
