"""Lint: every error names file:line, the YAML path and, when it can, what was meant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esbhub.routes.loader import load_paths, load_text
from esbhub.routes.models import json_schema

GOOD = """\
name: ok
from: {topic: party.v1}
steps:
  - type: filter
    if: "payload.x"
to:
  - topic: out.v1
"""


def errors_of(text: str) -> list:
    res = load_text(text, "r.yaml")
    assert not res.routes or res.errors
    return res.errors


def one(text: str):
    errs = errors_of(text)
    assert len(errs) == 1, [str(e) for e in errs]
    return errs[0]


def test_valid_route_loads_with_its_line_and_text():
    res = load_text(GOOD, "r.yaml")
    assert res.ok and res.routes[0].route.name == "ok" and res.routes[0].line == 1
    assert "payload.x" in res.routes[0].text


def test_unknown_key_names_line_path_and_did_you_mean():
    e = one(GOOD.replace("  - topic: out.v1", "  - topic: out.v1\n    nmae: x"))
    assert (e.file, e.line, e.loc) == ("r.yaml", 8, "to[0].nmae")
    assert e.hint == "did you mean 'name'?"
    assert str(e).startswith("r.yaml:8: to[0].nmae: unknown key 'nmae'")


def test_unknown_key_inside_a_step_suggests_that_steps_fields():
    e = one(GOOD.replace('    if: "payload.x"', '    if: "payload.x"\n    iff: y'))
    assert (e.line, e.loc, e.hint) == (6, "steps[0].iff", "did you mean 'if'?")


def test_unknown_step_type_suggests_the_closest():
    e = one(GOOD.replace("type: filter", "type: filtr"))
    assert (e.line, e.loc, e.type) == (4, "steps[0].type", "union_tag_invalid")
    assert e.hint == "did you mean 'filter'?"


def test_wrong_type_and_missing_key_are_reported_at_their_node():
    errs = errors_of(GOOD.replace("to:\n  - topic: out.v1", "to:\n  - topic: out.v1\nconcurrency: lots").replace('    if: "payload.x"\n', ""))
    locs = {(e.loc, e.line) for e in errs}
    assert ("concurrency", 7) in locs
    assert any(e.loc == "steps[0].if" and e.line == 4 and "missing" in e.msg for e in errs)


def test_unknown_schema_with_did_you_mean():
    e = one(GOOD.replace("  - type: filter\n    if: \"payload.x\"", "  - type: validate\n    schema: party.v9"))
    assert (e.line, e.loc, e.type, e.hint) == (5, "steps[0].schema", "unknown_schema", "did you mean 'party.v1'?")


def test_unknown_adapter_with_did_you_mean():
    e = one(GOOD.replace("  - topic: out.v1", "  - adapter: memmory"))
    assert (e.line, e.loc, e.type) == (7, "to[0].adapter", "unknown_adapter")
    assert e.hint == "did you mean 'memory'?"


def test_adapter_config_is_validated_against_the_adapters_model():
    e = one(GOOD.replace("  - topic: out.v1", "  - adapter: memory\n    config: {nam: x}"))
    assert (e.line, e.loc, e.hint) == (8, "to[0].config.nam", "did you mean 'name'?")


def test_at_least_once_route_without_dead_letter_is_an_error():
    e = one(GOOD + "on_error: {dead_letter: none}\n")
    assert (e.line, e.loc, e.type) == (8, "on_error.dead_letter", "no_dead_letter")
    assert load_text(GOOD + "on_error: {dead_letter: none}\ndelivery: at_most_once\n", "r.yaml").ok


@pytest.mark.parametrize(
    "snippet",
    [
        "  - adapter: memory\n    config: {name: x, password: hunter2}",
        "  - adapter: memory\n    config: {name: x, api_token: abc}",
        "  - adapter: memory\n    config: {name: 'postgresql://u:hunter2@db/x'}",
    ],
)
def test_inline_secret_is_refused(snippet):
    errs = errors_of(GOOD.replace("  - topic: out.v1", snippet))
    assert any(e.type == "inline_secret" and e.line == 8 for e in errs), [str(e) for e in errs]


def test_secret_by_reference_is_accepted_by_the_scan():
    res = load_text(GOOD.replace("  - topic: out.v1", "  - adapter: memory\n    config: {name: '${env:X}'}"), "r.yaml")
    assert res.ok
    errs = errors_of(GOOD + "description: 'x'\n" + "x_password: '${env:PW}'\n")
    assert not any(e.type == "inline_secret" for e in errs)  # only the unknown key is reported


def test_a_key_naming_a_secrets_file_is_not_an_inline_secret():
    snippet = "  - adapter: memory\n    config: {name: x, private_key_file: /etc/esbhub/bank_id_ed25519}"
    errs = errors_of(GOOD.replace("  - topic: out.v1", snippet))
    assert not any(e.type == "inline_secret" for e in errs), [str(e) for e in errs]
    snippet = "  - adapter: memory\n    config: {name: x, private_key: '-----BEGIN OPENSSH PRIVATE KEY-----'}"
    assert any(e.type == "inline_secret" for e in errors_of(GOOD.replace("  - topic: out.v1", snippet)))


def test_bad_expression_is_reported_with_its_line():
    e = one(GOOD.replace('if: "payload.x"', 'if: "payload.x =="'))
    assert (e.line, e.loc, e.type) == (5, "steps[0].if", "expression")


def test_map_target_outside_payload_headers_type_is_refused():
    text = GOOD.replace('  - type: filter\n    if: "payload.x"', "  - type: map\n    set: {id: payload.x}")
    e = one(text)
    assert e.loc == "steps[0].set" and "target must be" in e.msg


def test_aggregate_inside_a_choice_is_refused():
    text = GOOD.replace(
        '  - type: filter\n    if: "payload.x"',
        "  - type: choice\n    when:\n      - if: payload.x\n        steps:\n          - {type: aggregate, correlation: id, size: 2}",
    )
    e = one(text)
    assert e.loc == "steps[0].when[0].steps[0].type" and e.line == 8


def test_unknown_code_step_function():
    e = one(GOOD.replace('  - type: filter\n    if: "payload.x"', "  - type: code\n    function: nope.fn"))
    assert e.type == "unknown_function" and e.line == 5


def test_yaml_syntax_error_has_a_line():
    e = one("name: x\nfrom: {topic: a\n")
    assert e.loc == "(yaml)" and e.line is not None


def test_duplicate_key_is_a_yaml_error():
    e = one(GOOD + "name: again\n")
    assert e.loc == "(yaml)" and e.line == 8


def test_several_routes_in_one_file_are_located_by_index():
    text = "routes:\n  - name: a\n    from: {topic: x.v1}\n  - name: b\n    from: {topik: x.v1}\n"
    res = load_text(text, "m.yaml")
    assert [r.route.name for r in res.routes] == ["a"]
    assert [(e.loc, e.line) for e in res.errors][0] == ("routes[1].from.topik", 5)


def test_duplicate_route_names_across_files(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    res = load_paths([tmp_path])
    assert any(e.type == "duplicate" for e in res.errors)


def test_tests_file_beside_a_route_is_attached(tmp_path: Path):
    (tmp_path / "r.yaml").write_text(GOOD)
    (tmp_path / "r.tests.yaml").write_text("tests:\n  - name: c1\n    input: {type: party.v1, payload: {x: 1}}\n")
    res = load_paths([tmp_path])
    assert res.ok and [t.name for t in res.routes[0].route.tests] == ["c1"]


def test_json_schema_export_forbids_unknown_keys_and_knows_every_step():
    from esbhub.routes.models import STEP_MODELS

    schema = json_schema()
    text = json.dumps(schema)
    route = schema["$defs"]["Route"]
    assert route["additionalProperties"] is False and "from" in route["properties"]
    for model in STEP_MODELS.values():
        d = schema["$defs"][model.__name__]
        assert d["additionalProperties"] is False
    assert '"mapping"' in text  # the discriminator on 'type' tells editors which step model applies


def test_route_publishing_to_a_topic_it_consumes_is_a_loop():
    e = one(GOOD.replace("from: {topic: party.v1}", "from: {topic: 'out.*'}"))
    assert (e.type, e.loc, e.line) == ("loop", "to[0].topic", 7)


def test_authorization_header_must_use_a_reference_but_may_embed_it():
    base = GOOD.replace(
        '  - type: filter\n    if: "payload.x"',
        "  - type: enrich\n    http: {url: 'http://x/{id}', params: {id: payload.id}, headers: {Authorization: HDR}}\n    target: payload.c",
    )
    assert any(e.type == "inline_secret" for e in errors_of(base.replace("HDR", "'Bearer abc123'")))
    assert load_text(base.replace("HDR", "'Bearer ${env:CRM_TOKEN}'"), "r.yaml").ok
