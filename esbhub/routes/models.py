"""Route files as pydantic models: one spec drives validation, JSON Schema and the docs.

A route file holds one route (a mapping with ``name``) or several (``routes: [...]``)::

    name: vip-parties
    from: {topic: party.v1}
    steps:
      - type: validate
      - type: filter
        if: "payload.attributes.monthly_revenue > `10000`"
      - type: map
        set: {headers.tier: "'vip'"}
    to:
      - topic: party.vip.v1
    on_error: {retry: {max_attempts: 3}, dead_letter: store}

Every step is a model discriminated by ``type``; expressions are JMESPath evaluated over
``{id, type, source, correlation_id, headers, payload, attempt}``; a *target* is a dotted
path into ``payload``/``headers``/``type`` (``payload.customer.name``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from esbhub.config import RetryPolicy

NAME_RE = r"^[a-z][a-z0-9_-]{0,62}$"
TARGET_RE = re.compile(r"^(payload(\.[A-Za-z_][A-Za-z0-9_-]*)*|headers\.[A-Za-z0-9_.-]+|type)$")

Expr = Annotated[str, Field(min_length=1, description="A JMESPath expression over the message.")]


def _check_target(v: str) -> str:
    if not TARGET_RE.match(v):
        raise ValueError("target must be 'payload', 'payload.<field>[.<field>…]', 'headers.<name>' or 'type'")
    return v


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------- endpoints


class SinkSpec(Model):
    """Where messages go: a bus topic (``topic``) or an adapter endpoint (``adapter`` + ``config``).

    Built-in adapters: ``bus`` (config ``{topic}``), ``log`` (logs ids only), ``memory``
    (an in-process list, for tests and demos). Others come from ``esbhub.adapters.registry``.
    """

    name: str | None = Field(default=None, pattern=NAME_RE, description="Name of this sink in tests and traces; default: the topic or adapter name.")
    topic: str | None = Field(default=None, min_length=1, description="Publish to the bus with this routing key (e.g. 'party.vip.v1').")
    adapter: str | None = Field(default=None, min_length=1, description="Send through this sink adapter (e.g. 'sql', 'http', 'sftp').")
    config: dict[str, Any] = Field(default_factory=dict, description="The adapter's config (validated against its model).")

    @model_validator(mode="after")
    def _one_target(self) -> SinkSpec:
        if (self.topic is None) == (self.adapter is None):
            raise ValueError("give exactly one of 'topic' or 'adapter'")
        if self.topic is not None and self.config:
            raise ValueError("'config' belongs to an adapter sink, not a topic")
        return self

    @property
    def label(self) -> str:
        return self.name or self.topic or str(self.adapter)


class FromSpec(Model):
    """Where a route's messages come from: bus topic patterns or a source adapter endpoint."""

    topic: str | list[str] | None = Field(default=None, description="Topic pattern(s) the route's queue is bound to ('party.v1', 'bill.*', '#').")
    adapter: str | None = Field(default=None, description="A source adapter whose messages feed this route (e.g. 'sftp', 'sql').")
    config: dict[str, Any] = Field(default_factory=dict, description="The source adapter's config.")

    @model_validator(mode="after")
    def _one_source(self) -> FromSpec:
        if (self.topic is None) == (self.adapter is None):
            raise ValueError("give exactly one of 'topic' or 'adapter'")
        return self

    @property
    def topics(self) -> list[str]:
        if self.topic is None:
            return []
        return [self.topic] if isinstance(self.topic, str) else list(self.topic)


class OnError(Model):
    """What happens when a step or sink fails: retry per policy, then dead-letter."""

    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Redelivery policy (attempts, backoff, max delay, which error kinds).")
    dead_letter: Literal["store", "none"] = Field(
        default="store",
        description="'store': failed messages go to the dead-letter store (browse, edit, replay). "
        "'none' is allowed only for delivery: at_most_once routes.",
    )


# ---------------------------------------------------------------- steps


class StepBase(Model):
    name: str | None = Field(default=None, description="A label for traces and 'routes try' output.")
    description: str | None = Field(default=None, description="What the step is for.")


class ValidateStep(StepBase):
    """Check the payload against a canonical schema; an invalid payload is dead-lettered with each wrong field."""

    type: Literal["validate"]
    schema_: str | None = Field(default=None, alias="schema", description="Schema name (e.g. 'party.v1'); default: the message's type.")
    normalize: bool = Field(default=True, description="Replace the payload with its validated, normalized JSON form.")


class FilterStep(StepBase):
    """Keep only messages for which the expression is truthy; others are dropped (counted as filtered)."""

    type: Literal["filter"]
    if_: Expr = Field(alias="if", description="JMESPath condition; false, null, empty → message dropped.")


class MapStep(StepBase):
    """Declarative mapping: ``set`` target ← expression, ``values`` target ← constant, ``remove``, ``rename``.

    Applied in the order rename → remove → set → values. Expressions read the message as it was
    before this step, so ``set`` entries never see each other's results.
    """

    type: Literal["map"]
    set: dict[str, Expr] = Field(default_factory=dict, description="target path ← JMESPath expression.")
    values: dict[str, Any] = Field(default_factory=dict, description="target path ← constant value.")
    remove: list[str] = Field(default_factory=list, description="Target paths to delete.")
    rename: dict[str, str] = Field(default_factory=dict, description="old target path → new target path.")
    replace: bool = Field(default=False, description="Start from an empty payload: only 'set'/'values' targets survive.")

    @field_validator("set", "values", "rename")
    @classmethod
    def _targets(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in v:
            _check_target(k)
        return v

    @field_validator("remove")
    @classmethod
    def _remove_targets(cls, v: list[str]) -> list[str]:
        for k in v:
            _check_target(k)
        return v


class CacheSpec(Model):
    ttl: float = Field(default=60.0, ge=0, description="Seconds a looked-up value is reused (0: no cache).")
    max_entries: int = Field(default=10_000, ge=1, description="Entries kept; least recently used evicted.")


class MdmLookup(Model):
    function: str = Field(description="A lookup function registered with esbhub.routes.steps.register_lookup (e.g. 'mdm.golden_by_xref').")
    key: Expr = Field(description="Expression giving the lookup key.")
    args: dict[str, Any] = Field(default_factory=dict, description="Constant keyword arguments for the function.")


class SqlLookup(Model):
    url: str = Field(description="SQLAlchemy URL; a password only as ${env:..}/${file:..}.")
    query: str = Field(description="SELECT with named parameters (':name'); the first row is the result.")
    params: dict[str, Expr] = Field(default_factory=dict, description="parameter name ← expression.")
    many: bool = Field(default=False, description="Return all rows (a list) instead of the first.")
    timeout: float = Field(default=5.0, gt=0, le=120, description="Statement timeout, seconds.")


class HttpLookup(Model):
    url: str = Field(description="URL; '{name}' placeholders are filled from 'params'.")
    method: Literal["GET", "POST"] = Field(default="GET", description="HTTP method.")
    params: dict[str, Expr] = Field(default_factory=dict, description="URL placeholder / query parameter ← expression.")
    body: Expr | None = Field(default=None, description="Expression giving the JSON body (POST).")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers; secrets only as ${env:..}/${file:..}.")
    timeout: float = Field(default=5.0, gt=0, le=120, description="Request timeout, seconds.")


class SoapLookup(Model):
    config: dict[str, Any] = Field(
        description="The soap adapter's config (wsdl, operation, service, port, address, wsse, TLS, timeout, "
        "fault_map …; see docs/adapters/soap.md) — checked against that adapter's model at lint time. "
        "'request' and 'fields' are not used here: give 'params'."
    )
    params: dict[str, Expr] = Field(default_factory=dict, description="Request parameter of the operation ← expression.")
    select: Expr | None = Field(
        default=None, description="Expression over the (serialized) response giving the value; default: the whole response."
    )
    not_found_faults: list[str] = Field(
        default_factory=list,
        description="SOAP fault codes (local part, e.g. 'Client.NotFound', or its first segment) meaning "
        "'no such record': the lookup gives null (see on_missing) instead of an error.",
    )


def soap_lookup_config(config: dict[str, Any]) -> dict[str, Any]:
    """The soap adapter config a SOAP lookup runs with: the request is the evaluated ``params``."""
    out = {k: v for k, v in config.items() if k not in ("request", "fields")}
    out.update(request="payload", result=True)
    return out


class EnrichStep(StepBase):
    """Look a value up (MDM, SQL, HTTP or SOAP) and put it at ``target``; results are cached with a TTL."""

    type: Literal["enrich"]
    mdm: MdmLookup | None = Field(default=None, description="Look up through a registered lookup function.")
    sql: SqlLookup | None = Field(default=None, description="Look up with a SQL query.")
    http: HttpLookup | None = Field(default=None, description="Look up with an HTTP call (JSON response).")
    soap: SoapLookup | None = Field(default=None, description="Look up with a SOAP call (soap adapter: zeep, WS-Security, fault mapping).")
    target: str = Field(description="Where the result goes (e.g. 'payload.customer').")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Result cache.")
    on_missing: Literal["keep", "null", "fail"] = Field(
        default="keep", description="No result: leave the target alone, set it to null, or dead-letter the message."
    )

    @model_validator(mode="after")
    def _one_lookup(self) -> EnrichStep:
        n = sum(x is not None for x in (self.mdm, self.sql, self.http, self.soap))
        if n != 1:
            raise ValueError("give exactly one of 'mdm', 'sql', 'http' or 'soap'")
        _check_target(self.target)
        return self


class Branch(Model):
    steps: list[Step] = Field(default_factory=list, description="Steps run on the branch.")
    to: list[SinkSpec] | None = Field(
        default=None, description="If given, the branch ends here: messages go to these sinks, not the route's 'to'."
    )


class When(Branch):
    if_: Expr = Field(alias="if", description="Condition; the first truthy branch is taken.")


class ChoiceStep(StepBase):
    """Content-based router: the first ``when`` whose condition holds; else ``otherwise``; else dead-letter."""

    type: Literal["choice"]
    when: list[When] = Field(min_length=1, description="Branches tried in order.")
    otherwise: Branch | None = Field(
        default=None, description="Taken when no branch matches. Without it, an unmatched message is dead-lettered with the reason."
    )


class SplitStep(StepBase):
    """Turn a list into one message per element, with sequence headers (``split-index``, ``split-size``, ``split-parent``).

    An empty list produces no message (the input is counted as split-empty).
    """

    type: Literal["split"]
    expression: Expr = Field(description="Expression giving the list; each element becomes a payload.")
    message_type: str | None = Field(default=None, description="Type of the parts (default: the input's type).")


class AggregateStep(StepBase):
    """Collect messages by correlation key; emit one message when complete (size, predicate or timeout).

    Group state lives in SQL (table ``route_aggregate_members``), so a worker restart loses
    nothing; groups whose timeout passed are completed by a sweeper, also after a restart.
    The aggregate's payload is ``{"key": …, "items": [payloads…]}`` unless ``output`` says otherwise.
    Must be a top-level step.
    """

    type: Literal["aggregate"]
    correlation: Expr = Field(description="Expression giving the group key.")
    size: int | None = Field(default=None, ge=1, description="Complete when the group has this many messages.")
    timeout: float | None = Field(default=None, gt=0, description="Complete this many seconds after the group's first message.")
    complete_when: Expr | None = Field(default=None, description="Complete when true over {key, items, count}.")
    output: Expr | None = Field(default=None, description="Expression over {key, items, count} giving the payload.")
    message_type: str | None = Field(default=None, description="Type of the aggregate (default: the first member's type).")

    @model_validator(mode="after")
    def _some_completion(self) -> AggregateStep:
        if self.size is None and self.timeout is None and self.complete_when is None:
            raise ValueError("give at least one of 'size', 'timeout' or 'complete_when'")
        return self


class RecipientListStep(StepBase):
    """Send a copy to every topic the expression names (a string or a list of strings); the message continues."""

    type: Literal["recipient_list"]
    recipients: Expr = Field(description="Expression giving topic name(s).")
    allowed: list[str] | None = Field(default=None, description="If set, recipients outside this list are an error.")


class WireTapStep(StepBase):
    """Send a copy to a sink (audit, monitoring); the message continues unchanged."""

    type: Literal["wire_tap"]
    to: SinkSpec = Field(description="The sink that receives the copy.")


class ThrottleStep(StepBase):
    """Limit throughput (token bucket per worker process): waits for a token, never drops."""

    type: Literal["throttle"]
    rate: float = Field(gt=0, description="Messages per second.")
    burst: int = Field(default=1, ge=1, description="Messages allowed at once before the rate applies.")


class DelayStep(StepBase):
    """Hold a message for ``seconds`` before the next step (≤ 1 s inline; longer: re-queued with a delay). Top-level only."""

    type: Literal["delay"]
    seconds: float = Field(ge=0, le=86400, description="How long to hold the message.")


class CallStep(StepBase):
    """Request-reply to another route (its reply is its final message) or a sink adapter (its send() result)."""

    type: Literal["call"]
    route: str | None = Field(default=None, description="Name of the route to call.")
    sink: SinkSpec | None = Field(default=None, description="A sink adapter to call.")
    target: str = Field(default="payload", description="Where the reply goes ('payload' replaces it).")
    timeout: float = Field(default=10.0, gt=0, le=300, description="Longest wait for the reply, seconds.")

    @model_validator(mode="after")
    def _one_callee(self) -> CallStep:
        if (self.route is None) == (self.sink is None):
            raise ValueError("give exactly one of 'route' or 'sink'")
        _check_target(self.target)
        return self


class CodeStep(StepBase):
    """A registered Python function by name (entry point group 'esbhub.steps' or @step): for what a mapping cannot express."""

    type: Literal["code"]
    function: str = Field(description="Registered step function name.")
    config: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments handed to the function.")


Step = Annotated[
    ValidateStep
    | FilterStep
    | MapStep
    | EnrichStep
    | ChoiceStep
    | SplitStep
    | AggregateStep
    | RecipientListStep
    | WireTapStep
    | ThrottleStep
    | DelayStep
    | CallStep
    | CodeStep,
    Field(discriminator="type"),
]

STEP_MODELS: dict[str, type[StepBase]] = {
    "validate": ValidateStep,
    "filter": FilterStep,
    "map": MapStep,
    "enrich": EnrichStep,
    "choice": ChoiceStep,
    "split": SplitStep,
    "aggregate": AggregateStep,
    "recipient_list": RecipientListStep,
    "wire_tap": WireTapStep,
    "throttle": ThrottleStep,
    "delay": DelayStep,
    "call": CallStep,
    "code": CodeStep,
}

Branch.model_rebuild()
When.model_rebuild()
ChoiceStep.model_rebuild()


# ---------------------------------------------------------------- tests


class MessageSpec(Model):
    """An input envelope of a route test."""

    type: str = Field(description="Message type, e.g. 'party.v1'.")
    source: str = Field(default="test", description="Source system.")
    id: str | None = Field(default=None, description="Message id (default: a new one).")
    headers: dict[str, str] = Field(default_factory=dict, description="Headers.")
    payload: Any = Field(default=None, description="Payload.")


class Expected(Model):
    """A message expected at a sink: each given part must match (payload/headers: subset match)."""

    type: str | None = Field(default=None, description="Expected type.")
    payload: Any = Field(default=None, description="Expected payload (dicts match as a subset).")
    headers: dict[str, str] | None = Field(default=None, description="Expected headers (subset).")


class ExpectedDeadLetter(Model):
    error: str | None = Field(default=None, description="Error type, e.g. 'InvalidMessage'.")
    reason: str | None = Field(default=None, description="Text the error message must contain.")


class Expect(Model):
    sinks: dict[str, list[Expected]] = Field(default_factory=dict, description="sink name → messages expected there, in order.")
    dead_letter: list[ExpectedDeadLetter] = Field(default_factory=list, description="Dead-lettered inputs expected, in order.")
    filtered: int | None = Field(default=None, ge=0, description="Inputs dropped by filters.")
    only_listed: bool = Field(default=True, description="Sinks not listed must receive nothing.")


class RouteTest(Model):
    """A test case kept beside a route: inputs → expected messages at each sink and the dead-letter."""

    name: str = Field(description="What the case proves.")
    route: str | None = Field(default=None, description="Route under test (needed in a <file>.tests.yaml holding several routes).")
    input: MessageSpec | None = Field(default=None, description="One input message.")
    inputs: list[MessageSpec] = Field(default_factory=list, description="Several input messages, in order.")
    mocks: dict[str, Any] = Field(default_factory=dict, description="lookup/call name → canned result (e.g. 'mdm:fn', 'route:name').")
    expect: Expect = Field(default_factory=Expect, description="What must come out.")

    def all_inputs(self) -> list[MessageSpec]:
        return ([self.input] if self.input else []) + list(self.inputs)


# ---------------------------------------------------------------- route


class Route(Model):
    """One route: from → steps → to, with its error policy and delivery guarantees."""

    name: str = Field(pattern=NAME_RE, description="Unique route name; its queue is 'route.<name>'.")
    description: str | None = Field(default=None, description="What the route does.")
    from_: FromSpec = Field(alias="from", description="Where messages come from.")
    steps: list[Step] = Field(default_factory=list, description="Ordered steps.")
    to: list[SinkSpec] = Field(default_factory=list, description="Sinks every message leaving the steps goes to.")
    on_error: OnError = Field(default_factory=OnError, description="Retry policy and dead-letter.")
    delivery: Literal["at_least_once", "at_most_once"] = Field(
        default="at_least_once", description="at_least_once: ack after the sinks succeeded, dead-letter on failure."
    )
    idempotency_key: Expr | None = Field(
        default=None, description="Expression giving a business key; a second message with the same key is dropped (default key: the message id)."
    )
    ordering_key: Expr | None = Field(
        default=None, description="Expression giving a key (e.g. a customer id); messages of one key are processed in order."
    )
    partitions: int = Field(default=4, ge=1, le=256, description="Sub-queues messages are hash-partitioned into when ordering_key is set.")
    concurrency: int = Field(default=1, ge=1, le=64, description="Consumer threads per worker process.")
    batch_max: int = Field(
        default=32, ge=1, le=1000,
        description="Most waiting messages a consumer runs in one go (micro-batch: their outputs are published "
        "in one write and their states committed together; a batch is never waited for, so at low load it is one "
        "message). 1 = one message at a time. Ordered routes always run one message at a time.",
    )
    tests: list[RouteTest] = Field(default_factory=list, description="Test cases run by 'esbhub routes test'.")


class RouteFile(Model):
    """A file holding several routes."""

    routes: list[Route] = Field(min_length=1, description="The routes.")


def json_schema() -> dict[str, Any]:
    """JSON Schema for a route file (a single route or ``routes: [...]``), for editors."""
    route = Route.model_json_schema(by_alias=True)
    defs = route.pop("$defs", {})
    defs["Route"] = route
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "esbhub route file",
        "anyOf": [
            {"$ref": "#/$defs/Route"},
            {
                "type": "object",
                "properties": {"routes": {"type": "array", "items": {"$ref": "#/$defs/Route"}, "minItems": 1}},
                "required": ["routes"],
                "additionalProperties": False,
            },
        ],
        "$defs": defs,
    }
