"""The API's personas as signed-in clients: alice owns the jobs, bob is another user, charlie
is staff (a superuser)."""

import pytest


def _client(user):
    from tests.factories import api_client  # imports the models: not before Django is set up

    return api_client(user)


@pytest.fixture
def alice(owner):
    return _client(owner)


@pytest.fixture
def bob(other_user):
    return _client(other_user)


@pytest.fixture
def charlie(staff):
    return _client(staff)
