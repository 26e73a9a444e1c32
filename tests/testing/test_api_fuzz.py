"""A fixed-seed sample of the API fuzzer (kiln/testing/api_fuzz.py): sessions of compile → hostile
calls → compile again over one shared cache. Every call gives eager's answer or a KilnError, a
valid call is never refused, and the module answers a valid call after refusing one."""

from hypothesis import HealthCheck, given, seed, settings

from kiln.testing.api_fuzz import run_session, sessions

# valid calls (and calls of another batch, where the batch is dynamic) must match: a Kiln that
# refused everything would pass "matched or refused"
NEVER_REFUSED = ("valid", "numpy", "non_contiguous", "channels_last", "valid after a refused call")


@seed(0)
@settings(max_examples=16, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(sessions())
def test_every_call_gives_eagers_answer_or_a_kiln_error(session):
    run_session(session)
    for outcome in session.outcomes:
        assert outcome.kind in ("matched", "refused"), f"{outcome.kind}: {outcome.detail}\n{session}"
        assert not (outcome.kind == "refused" and outcome.detail.split(":")[0] in NEVER_REFUSED), \
            f"a valid call was refused: {outcome.detail}\n{session}"
