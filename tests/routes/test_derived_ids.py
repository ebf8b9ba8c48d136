"""Derived message ids stay deterministic after the speed-ups: the Worker's ``stable_id`` gives
exactly what the ULID library gave, the engine's ``derive_id`` exactly what its first version
gave, and a route's outputs keep the engine's id through ``ctx.publish(keep_id=True)``."""

from __future__ import annotations

import hashlib
import random
import time

from ulid import ULID

from esbhub.bus.envelope import Envelope, new_id
from esbhub.bus.worker import HandlerContext, stable_id
from esbhub.routes import steps
from esbhub.routes.engine import CompiledRoute
from esbhub.routes.runtime import RouteHandler, RouteRuntime

from .conftest import env, route_of


def _stable_id_reference(parent_id: str, *parts: str) -> str:  # the Worker's code before the speed-up
    h = hashlib.sha256("\x1f".join((parent_id, *parts)).encode()).digest()
    ts = ULID.from_str(parent_id).bytes[:6]
    return str(ULID.from_bytes(ts + h[:10]))


def _derive_id_reference(parent: str, *parts: object) -> str:  # the engine's code before the speed-up
    h = hashlib.blake2b(("|".join([parent, *map(str, parts)])).encode(), digest_size=10).digest()
    ms = steps._ulid_ms(parent)  # noqa: SLF001
    assert ms is not None
    n = (ms << 80) | int.from_bytes(h, "big")
    out = []
    for _ in range(26):
        out.append(steps._B32[n & 31])  # noqa: SLF001
        n >>= 5
    return "".join(reversed(out))


def test_stable_id_equals_the_ulid_library_result_for_every_kind_of_ulid():
    rnd = random.Random(7)
    parents = [new_id() for _ in range(300)]
    parents += [str(ULID.from_bytes(rnd.randbytes(16))) for _ in range(300)]  # any timestamp, incl. the top one
    parents += [p.lower() for p in parents[:50]]  # ULIDs parse case-insensitively
    parents += ["00000000000000000000000000", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"]
    for p in parents:
        for parts in (("sub", "0"), ("route.x", "reply"), ()):
            assert stable_id(p, *parts) == _stable_id_reference(p, *parts)


def test_stable_id_of_a_non_ulid_parent_is_still_a_valid_ulid_of_now():
    for p in ["not-a-ulid", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "0123456789ABCDEFGHIJKLMNOU", ""]:
        before = int(time.time() * 1000)
        u = ULID.from_str(stable_id(p, "s", "0"))
        assert before <= u.milliseconds <= int(time.time() * 1000)
        assert u.bytes[6:] == hashlib.sha256("\x1f".join((p, "s", "0")).encode()).digest()[:10]


def test_engine_derive_id_is_unchanged():
    for _ in range(300):
        p = new_id()
        assert steps.derive_id(p, "route", "sink", 3) == _derive_id_reference(p, "route", "sink", 3)


class _Delivery:
    reply_to = None


def test_route_outputs_keep_the_engines_deterministic_id_through_the_worker_context():
    cr = CompiledRoute(route_of("name: r\nfrom: {topic: party.v1}\nto: [{topic: out.v1}, {topic: out2.v1}]\n"), 1)
    rt = RouteRuntime.__new__(RouteRuntime)  # deliver() only needs the broker for non-bus sinks
    rt.worker = object()
    rt.store = None
    handler = RouteHandler(rt, cr)
    e = env("party.v1", {"a": 1})
    ids = []
    for _ in range(2):  # a redelivery republishes the same ids
        ctx = HandlerContext(e, "r", _Delivery(), None)  # type: ignore[arg-type]
        handler(e, ctx)
        ids.append([o[0].id for o in ctx.outbox])
        assert [o[1] for o in ctx.outbox] == ["out.v1", "out2.v1"]
    expected = [o.envelope.id for o in cr.run(e).outputs]
    assert ids[0] == ids[1] == expected and len(set(expected)) == 2
    assert all(o[0].causation_id == e.id for o in ctx.outbox)


def test_other_handlers_still_get_ids_derived_by_the_worker():
    parent = Envelope.create("party.v1", {}, source="t")
    ctx = HandlerContext(parent, "sub", _Delivery(), None)  # type: ignore[arg-type]
    ctx.publish(parent.derive("out.v1", {"x": 1}))
    ctx.publish(parent.derive("out.v1", {"x": 2}))
    unrelated = Envelope.create("out.v1", {}, source="t")
    ctx.publish(unrelated)
    got = [o[0] for o in ctx.outbox]
    assert [g.id for g in got[:2]] == [stable_id(parent.id, "sub", "0"), stable_id(parent.id, "sub", "1")]
    assert got[2].id == unrelated.id and got[0].payload == {"x": 1}
    Envelope.model_validate(got[0].model_dump())  # still a valid envelope
