"""Golden events: the envelope body is exactly the GoldenEvent's JSON form."""

from __future__ import annotations

from esbhub.mdm.events import GoldenEvent, golden_event


def test_golden_event_body_is_the_models_json_dump_in_field_order():
    payload = GoldenEvent(
        golden_id="G1", seq=3, change="merged", status="active", merged_ids=["G2"], valid_from="2026-11-26T07:00:00+00:00",
        actor="engine", source_keys=["crm:1", "billing:A1"], tier="B",
        attributes={"name": {"value": "深圳市华信科技有限公司", "lineage": {"source_system": "crm", "source_id": "1",
                                                                    "rule": "trust"}},
                    "phones": {"value": ["+8675588886666"], "lineage": [{"source_system": "crm", "also": []}]}},
    )
    body = golden_event(payload, cause_id="e1").payload
    assert body == payload.model_dump(mode="json")
    assert list(body) == list(payload.model_dump(mode="json"))
