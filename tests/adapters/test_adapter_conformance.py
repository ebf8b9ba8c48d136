"""Runs the conformance suite (tests/adapters/conformance.py) over every registered adapter."""

from .conformance import (  # noqa: F401 - pytest collects the imported fixture and checks
    h,
    test_config_rejects_inline_secrets,
    test_config_rejects_unknown_keys,
    test_sink_delivers_to_its_real_peer_and_health_reports_success,
    test_sink_maps_peer_down_to_transient_error_and_health_reports_it,
    test_sink_on_slow_then_cut_peer_gives_transient_error_within_timeout_and_recovers,
    test_source_does_not_lose_or_ack_data_when_emit_raises,
    test_source_with_peer_down_at_start_keeps_running_reports_and_stops_cleanly,
    test_spec_is_complete_and_every_config_field_is_described,
)
