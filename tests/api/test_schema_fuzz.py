"""Property-based run of the API against its own OpenAPI schema (schemathesis).

Every operation gets generated requests, valid and invalid, with an owner's token: no response
may be a 5xx, and every response must match the schema (status, content type, body).
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.cache import cache
from hypothesis import HealthCheck, settings
from rest_framework.throttling import ScopedRateThrottle
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from segweb.wsgi import application
from tests.factories import create_job, succeed, token_for

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


@pytest.fixture
def alice_job(owner):
    return succeed(create_job(owner))


@pytest.fixture
def unthrottled(monkeypatch):
    """Fuzzing sends many requests a minute; the throttle has its own test."""
    rates = {
        **ScopedRateThrottle.THROTTLE_RATES,
        "job_create": None,
        "token": None,
        "threshold": None,
        "export": None,
        "signup": None,
    }
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", rates)
    cache.clear()


@pytest.mark.slow
@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI must not flake
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_matches_its_schema_and_never_fails_with_5xx(case, owner, alice_job, unthrottled):
    token = token_for(owner)  # a new one each example: a previous one may have revoked it
    excluded = [
        # "Schema-valid means accepted" does not hold here: a schema can say "a binary file" but
        # not "a decodable photo", nor "the right password".
        positive_data_acceptance,
    ]
    if case.media_type == "multipart/form-data":
        # Multipart cannot carry some generated "invalid" values (an empty array is no field at
        # all), so they arrive as valid requests. test_validation.py covers bad uploads fully.
        excluded.append(negative_data_rejection)
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, excluded_checks=excluded)
