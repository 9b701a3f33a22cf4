"""Signing in: the client's real address, password-guessing lockouts (django-axes), sign-up's
rate, API tokens (django-rest-knox) that are hashed, per client, expiring and revoked with the
password, and usernames compared casefolded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.cache import cache
from django.db import connection
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from segmentation.accounts import client_ip, username_key
from segmentation.api.throttling import ScopedThrottle
from tests.conftest import PASSWORD
from tests.factories import token_for

pytestmark = pytest.mark.django_db
TOKEN_URL = "/api/auth/token/"


@pytest.fixture(autouse=True)
def fresh_counts():
    """Throttle counts live in the shared cache: each test starts from none."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def lockout_after_3(settings):
    settings.AXES_FAILURE_LIMIT = 3


@pytest.fixture
def rates(monkeypatch):
    """Set some of DRF's throttle rates for one test."""

    def set_rates(**scopes):
        monkeypatch.setattr(
            ScopedThrottle, "THROTTLE_RATES", {**ScopedThrottle.THROTTLE_RATES, **scopes}
        )

    return set_rates


def authorized(token: str) -> int:
    return APIClient().get("/api/jobs/", HTTP_AUTHORIZATION=f"Token {token}").status_code


# --- The client's address -------------------------------------------------------------------


def request_from(peer: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": peer}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_without_a_trusted_proxy_forwarded_for_is_ignored(settings):
    settings.TRUSTED_PROXIES = 0
    assert client_ip(request_from("203.0.113.7", "198.51.100.1")) == "203.0.113.7"


def test_behind_one_proxy_the_address_it_appended_is_the_client(settings):
    settings.TRUSTED_PROXIES = 1
    # The client wrote "1.2.3.4" itself; nginx appended the address it saw.
    assert client_ip(request_from("127.0.0.1", "1.2.3.4, 203.0.113.7")) == "203.0.113.7"
    assert client_ip(request_from("127.0.0.1")) == "127.0.0.1"


def test_behind_two_proxies_the_second_entry_from_the_right_is_the_client(settings):
    settings.TRUSTED_PROXIES = 2
    forwarded = "1.2.3.4, 203.0.113.7, 10.0.0.2"
    assert client_ip(request_from("10.0.0.3", forwarded)) == "203.0.113.7"


def test_an_entry_that_is_no_address_falls_back_to_the_peer(settings):
    settings.TRUSTED_PROXIES = 1
    assert client_ip(request_from("127.0.0.1", "1.2.3.4, not-an-address")) == "127.0.0.1"


def test_a_peer_that_is_no_address_is_none(settings):
    settings.TRUSTED_PROXIES = 0
    assert client_ip(request_from("")) is None  # gunicorn on a Unix socket


def test_spoofed_forwarded_for_does_not_escape_the_token_throttle(settings, owner, rates):
    settings.TRUSTED_PROXIES = 0
    rates(token="3/min")
    client = APIClient()
    answers = [
        client.post(
            TOKEN_URL,
            {"username": "alice", "password": f"guess {i}"},
            HTTP_X_FORWARDED_FOR=f"198.51.100.{i}",
        ).status_code
        for i in range(5)
    ]
    assert answers == [400, 400, 400, 429, 429]
    refused = client.post(TOKEN_URL, {"username": "alice", "password": PASSWORD})
    assert refused.status_code == 429
    assert "throttled" in refused.json()["detail"].lower()


def test_behind_a_trusted_proxy_each_real_client_has_its_own_count(settings, owner, rates):
    settings.TRUSTED_PROXIES = 1
    rates(token="2/min")
    client = APIClient()

    def attempt(forwarded):
        data = {"username": "alice", "password": "wrong"}
        return client.post(TOKEN_URL, data, HTTP_X_FORWARDED_FOR=forwarded).status_code

    # One real client (203.0.113.7, appended by the proxy) spoofing the part it writes itself.
    assert [attempt(f"10.9.9.{i}, 203.0.113.7") for i in range(3)] == [400, 400, 429]
    # Another real client behind the same proxy is not held back by the first.
    assert attempt("203.0.113.8") == 400


# --- Password guessing: django-axes -------------------------------------------------------------


def sign_in(client, username, password, peer="192.0.2.1", url=None):
    url = url or reverse("login")
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=peer)


def test_the_sign_in_page_locks_out_an_account_whatever_the_address(client, owner, lockout_after_3):
    answers = [sign_in(client, "alice", "wrong", peer=f"192.0.2.{i}").status_code for i in range(3)]
    assert answers == [200, 200, 429]  # the failure that reaches the limit is already refused
    refused = sign_in(client, "alice", PASSWORD, peer="198.51.100.9")
    assert refused.status_code == 429
    assert "Too many failed sign-ins" in refused.content.decode()
    assert "15 minutes" in refused.content.decode()
    assert int(refused["Retry-After"]) == 15 * 60
    assert "_auth_user_id" not in client.session


def test_every_spelling_of_a_name_counts_against_one_account(client, owner, lockout_after_3):
    for i, name in enumerate(["alice", "ALICE", "Alice"]):
        sign_in(client, name, "wrong", peer=f"192.0.2.{i}")
    assert sign_in(client, "alice", PASSWORD, peer="198.51.100.9").status_code == 429


def test_the_sign_in_page_locks_out_an_address_whatever_the_account(
    client, owner, other_user, lockout_after_3
):
    for name in ["carol", "dave", "erin"]:
        sign_in(client, name, "wrong", peer="192.0.2.66")
    assert sign_in(client, "bob", PASSWORD, peer="192.0.2.66").status_code == 429
    # Another address signs bob in: the lockout is of that address, not of bob.
    assert sign_in(client, "bob", PASSWORD, peer="192.0.2.67").status_code == 302


def test_a_lockout_ends_after_the_cool_off(client, owner, lockout_after_3, settings):
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    for _ in range(3):
        sign_in(client, "alice", "wrong")
    assert sign_in(client, "alice", PASSWORD).status_code == 429
    from axes.models import AccessAttempt

    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(seconds=2))
    assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_the_admin_sign_in_locks_out_too(client, staff, lockout_after_3):
    url = reverse("admin:login")
    for i in range(3):
        sign_in(client, "charlie", "wrong", peer=f"192.0.2.{i}", url=url)
    refused = sign_in(client, "charlie", PASSWORD, peer="198.51.100.9", url=url)
    assert refused.status_code == 429
    assert "Too many failed sign-ins" in refused.content.decode()


def test_the_token_endpoint_locks_out_an_account(owner, lockout_after_3):
    client = APIClient()
    answers = [
        client.post(
            TOKEN_URL, {"username": "alice", "password": "wrong"}, REMOTE_ADDR=f"192.0.2.{i}"
        ).status_code
        for i in range(3)
    ]
    assert answers == [400, 400, 429]
    refused = client.post(
        TOKEN_URL, {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="198.51.100.9"
    )
    assert refused.status_code == 429
    assert "Too many failed sign-ins" in refused.json()["detail"]
    assert refused["Retry-After"]
    assert not AuthToken.objects.exists()


def test_the_token_endpoint_locks_out_an_address(owner, other_user, lockout_after_3):
    client = APIClient()
    for name in ["carol", "dave", "erin"]:
        client.post(TOKEN_URL, {"username": name, "password": "x"}, REMOTE_ADDR="192.0.2.66")
    refused = client.post(
        TOKEN_URL,
        {"username": "bob", "password": PASSWORD},
        format="json",
        REMOTE_ADDR="192.0.2.66",
    )
    assert refused.status_code == 429
    assert refused.json()["detail"]
    fine = client.post(
        TOKEN_URL, {"username": "bob", "password": PASSWORD}, REMOTE_ADDR="192.0.2.67"
    )
    assert fine.status_code == 200


# --- Sign-up ---------------------------------------------------------------------------------


def sign_up(client, username, peer="192.0.2.1"):
    data = {"username": username, "password1": PASSWORD, "password2": PASSWORD}
    return client.post(reverse("signup"), data, REMOTE_ADDR=peer)


def test_sign_up_is_throttled_per_address(client, django_user_model, rates):
    rates(signup="2/hour")
    assert sign_up(client, "one").status_code == 302
    client.logout()
    assert sign_up(client, "two").status_code == 302
    client.logout()
    refused = sign_up(client, "three")
    assert refused.status_code == 429
    assert "Too many sign-ups from your address" in refused.content.decode()
    assert int(refused["Retry-After"]) > 0
    assert not django_user_model.objects.filter(username="three").exists()
    assert sign_up(client, "three", peer="192.0.2.2").status_code == 302


def test_spoofed_forwarded_for_does_not_escape_the_sign_up_rate(client, settings, rates):
    settings.TRUSTED_PROXIES = 0
    rates(signup="1/hour")
    data = {"username": "one", "password1": PASSWORD, "password2": PASSWORD}
    assert client.post(reverse("signup"), data, HTTP_X_FORWARDED_FOR="1.1.1.1").status_code == 302
    client.logout()
    data["username"] = "two"
    assert client.post(reverse("signup"), data, HTTP_X_FORWARDED_FOR="2.2.2.2").status_code == 429


# --- Usernames are unique casefolded --------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "new"),
    [("Émile", "émile"), ("émile", "ÉMILE"), ("Straße", "STRASSE"), ("bob", "BOB")],
)
def test_sign_up_refuses_a_name_differing_only_in_case(client, django_user_model, existing, new):
    django_user_model.objects.create_user(existing, password=PASSWORD)
    response = sign_up(client, new)
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert django_user_model.objects.count() == 1


def test_a_name_signs_in_in_any_case(client, django_user_model):
    django_user_model.objects.create_user("Émile", password=PASSWORD)
    assert sign_in(client, "éMILE", PASSWORD).status_code == 302
    token = APIClient().post(TOKEN_URL, {"username": "émile", "password": PASSWORD})
    assert token.status_code == 200


def test_username_key_folds_case_and_compatibility_forms():
    assert username_key("Émile") == username_key("émile") == username_key("E\u0301MILE".upper())
    assert username_key("Straße") == username_key("STRASSE")
    assert username_key("ａｌｉｃｅ") == username_key("Alice")  # full-width letters


# --- Tokens -------------------------------------------------------------------------------------


def test_tokens_are_stored_hashed(owner):
    key = APIClient().post(TOKEN_URL, {"username": "alice", "password": PASSWORD}).json()["token"]
    stored = AuthToken.objects.get(user=owner)
    assert stored.digest != key
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM knox_authtoken")
        rows = cursor.fetchall()
    assert rows and not any(key in str(value) for row in rows for value in row)
    assert authorized(key) == 200


def test_each_client_gets_its_own_token(owner):
    client = APIClient()
    first, second = (
        client.post(TOKEN_URL, {"username": "alice", "password": PASSWORD}).json()["token"]
        for _ in range(2)
    )
    assert first != second
    assert authorized(first) == authorized(second) == 200


def test_tokens_expire_when_a_lifetime_is_set(owner, settings):
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_TTL": timedelta(days=30)}
    answer = APIClient().post(TOKEN_URL, {"username": "alice", "password": PASSWORD}).json()
    assert answer["expiry"] is not None
    assert authorized(answer["token"]) == 200
    AuthToken.objects.update(expiry=timezone.now() - timedelta(seconds=1))
    assert authorized(answer["token"]) == 401
    assert not AuthToken.objects.exists()  # knox deletes an expired token when it is shown


def test_set_password_revokes_every_token(owner, other_user):
    tokens = [token_for(owner), token_for(owner)]
    bobs = token_for(other_user)
    owner.set_password("a brand new passphrase")
    owner.save()
    assert [authorized(t) for t in tokens] == [401, 401]
    assert authorized(bobs) == 200


def test_a_password_set_in_the_admin_revokes_every_token(client, staff, owner):
    token = token_for(owner)
    client.force_login(staff)
    url = reverse("admin:auth_user_password_change", args=[owner.pk])
    new = "another correct horse battery"
    response = client.post(url, {"password1": new, "password2": new, "usable_password": "true"})
    assert response.status_code == 302
    assert authorized(token) == 401


def test_saving_a_user_without_a_new_password_keeps_the_tokens(owner):
    token = token_for(owner)
    owner.first_name = "Alice"
    owner.save()
    owner.save(update_fields=["last_login"])
    assert authorized(token) == 200


def test_deactivating_in_the_admin_revokes_every_token(client, staff, owner):
    token = token_for(owner)
    client.force_login(staff)
    url = reverse("admin:auth_user_changelist")
    client.post(url, {"action": "deactivate_users", ACTION_CHECKBOX_NAME: [owner.pk]})
    assert authorized(token) == 401
    assert not AuthToken.objects.filter(user=owner).exists()


def test_deactivating_by_any_means_revokes_every_token(owner):
    token = token_for(owner)
    owner.is_active = False
    owner.save()  # as the admin's change form does
    owner.is_active = True
    owner.save()
    assert authorized(token) == 401  # not back to life on reactivation
    assert not AuthToken.objects.filter(user=owner).exists()


def test_a_token_header_that_is_not_utf8_is_a_401():
    response = APIClient().get("/api/jobs/", HTTP_AUTHORIZATION="Token caf\xe9")
    assert response.status_code == 401


# --- The account page -----------------------------------------------------------------------


def test_the_account_page_lists_and_revokes_ones_own_tokens(client, owner, other_user):
    laptop, phone = token_for(owner), token_for(owner)
    bobs = token_for(other_user)
    client.force_login(owner)
    page = client.get(reverse("account")).content.decode()
    mine = list(AuthToken.objects.filter(user=owner))
    assert all(token.digest[:8] in page for token in mine)
    assert AuthToken.objects.get(user=other_user).digest[:8] not in page

    digest = next(t.digest for t in mine if t.token_key == laptop[:15])
    client.post(reverse("token-revoke", args=[digest]))
    assert (authorized(laptop), authorized(phone)) == (401, 200)
    client.post(reverse("tokens-revoke"))
    assert authorized(phone) == 401
    assert authorized(bobs) == 200


def test_another_users_token_cannot_be_revoked_from_the_account_page(client, owner, other_user):
    bobs = token_for(other_user)
    client.force_login(owner)
    digest = AuthToken.objects.get(user=other_user).digest
    assert client.post(reverse("token-revoke", args=[digest])).status_code == 404
    assert authorized(bobs) == 200


def test_the_admin_refuses_a_name_differing_only_in_case(client, staff, django_user_model):
    django_user_model.objects.create_user("Émile", password=PASSWORD)
    client.force_login(staff)
    data = {
        "username": "émile",
        "password1": PASSWORD,
        "password2": PASSWORD,
        "usable_password": "true",
    }
    response = client.post(reverse("admin:auth_user_add"), data)
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert not django_user_model.objects.filter(username="émile").exists()
