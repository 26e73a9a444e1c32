"""A fixed-seed sample of the differential fuzzer: random graphs compile and match eager, or are
refused by name; hypothesis shrinks any failure to a minimal graph."""

from hypothesis import HealthCheck, given, seed, settings

from kiln.fuzz import classify, programs


@seed(0)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(programs())
def test_random_graph_matches_eager_or_is_refused_by_name(program):
    outcome = classify(program)
    assert outcome.kind in ("matched", "refused"), f"{outcome.kind}: {outcome.detail}\n{program}"
