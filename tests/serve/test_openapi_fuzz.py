"""A schema fuzz: schemathesis sends every operation of the OpenAPI document bodies that fit it and bodies that do
not; none may get a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from blipkit.serve.app import create_app

EXAMPLES = 25  # per operation and mode: a few seconds in all on the tiny models


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_the_schema_allows_or_breaks_gets_a_5xx(make_service, mode):
    service = make_service(timeout_s=30)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(service))
    statuses: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and not operation.body:
            continue  # nothing to break: the GETs take no body, and any text is a model name
        fuzz(operation, mode, statuses.setdefault(operation.label, set()))
    assert "POST /v1/caption" in statuses and all(statuses.values())


def fuzz(operation, mode: GenerationMode, statuses: set[int]) -> None:
    # derandomize: the same examples every run, so a pass or a failure is the code's, not the draw's.
    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def no_server_error(case):
        response = case.call()
        assert response.status_code < 500, (case.body, response.text)
        statuses.add(response.status_code)

    no_server_error()
