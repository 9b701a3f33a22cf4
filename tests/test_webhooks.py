"""Webhooks: creation and its SSRF refusals, signed deliveries to a real HTTP server on
127.0.0.1, retries with backoff, the deliveries log, and the job and collection events."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db.models import F
from django.utils import timezone

from segmentation import outbound, services
from segmentation.models import Collection, Job, Webhook, WebhookAttempt, WebhookDelivery
from tests.factories import api_client, create_job, fail, succeed

pytestmark = pytest.mark.django_db


class Receiver:
    """A webhook receiver on 127.0.0.1: answers with the queued statuses (then 200), keeps
    every request it got."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: list[int] = []
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body,
                                          "path": self.path})  # fmt: skip
                time.sleep(receiver.delay)
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        # shutdown() waits for the serve loop's next poll: 0.5 s by default, at every test's end.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def loopback_allowed(settings):
    settings.SEGWEB = {**settings.SEGWEB, "WEBHOOK_ALLOW_LOOPBACK": True}


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """Run what waits for the commit (the job-finished hook) as the block ends."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def alice(owner):
    return api_client(owner)


@pytest.fixture
def hook(owner, receiver, loopback_allowed):
    return services.webhook_create(
        owner=owner, url=receiver.url, events=["job.finished", "collection.finished"]
    )


def due_now(delivery: WebhookDelivery) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


@pytest.fixture
def published(monkeypatch):
    """Deliveries handed to the queue (the tests run the task themselves)."""
    ids: list = []
    monkeypatch.setattr(services, "_publish_delivery", ids.append)
    return ids


# --- creating webhooks, and what is refused -------------------------------------------------


def test_creating_a_webhook_answers_its_secret_once(alice, receiver, loopback_allowed):
    response = alice.post(
        "/api/webhooks/", {"url": receiver.url, "events": ["job.finished"]}, format="json"
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    webhook = Webhook.objects.get(pk=body["id"])
    assert body["secret"] == webhook.secret
    assert len(webhook.secret) == 64
    assert body["events"] == ["job.finished"]
    listed = alice.get("/api/webhooks/").json()["results"]
    assert [w["id"] for w in listed] == [body["id"]]
    assert "secret" not in listed[0]
    assert "secret" not in alice.get(f"/api/webhooks/{webhook.pk}/").json()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",  # private
        "http://192.168.1.20:8080/hook",
        "http://172.16.0.5/",
        "http://169.254.169.254/latest/meta-data/",  # link-local: cloud metadata
        "http://[fe80::1]/",
        "http://[fd00::1]/",  # unique local (private)
        "http://224.0.0.1/",  # multicast
        "http://240.0.0.1/",  # reserved
        "http://0.0.0.0:6379/",  # unspecified
        "http://100.64.0.1/",  # shared address space (CGNAT)
        "http://127.0.0.1:6379/",  # loopback, without SEGWEB_WEBHOOK_ALLOW_LOOPBACK
        "http://[::1]:5432/",
        "http://[::ffff:127.0.0.1]/",  # loopback written as IPv4-mapped IPv6
        "http://[::ffff:10.0.0.1]/",
        "http://2130706433/",  # 127.0.0.1 as one number
    ],
)
def test_non_public_destinations_are_refused(alice, url):
    response = alice.post("/api/webhooks/", {"url": url, "events": ["job.finished"]}, format="json")

    assert response.status_code == 400, url
    assert "non-public address" in response.json()["detail"]
    assert Webhook.objects.count() == 0


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1/", "http://169.254.169.254/", "http://[fe80::1]/", "http://192.168.0.1/"],
)
def test_allowing_loopback_keeps_private_and_link_local_refused(alice, loopback_allowed, url):
    response = alice.post("/api/webhooks/", {"url": url, "events": ["job.finished"]}, format="json")
    assert response.status_code == 400
    assert "non-public address" in response.json()["detail"]


def test_a_name_that_resolves_to_a_private_address_is_refused(alice, monkeypatch):
    def resolve(host, port, *args, **kwargs):
        assert host == "intranet.example.com"  # never sent to a real resolver
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    response = alice.post(
        "/api/webhooks/",
        {"url": "https://intranet.example.com/hook", "events": ["job.finished"]},
        format="json",
    )
    assert response.status_code == 400
    assert (
        "resolves to a non-public address (10.1.2.3 is a private address)"
        in (response.json()["detail"])
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"url": "ftp://example.com/", "events": ["job.finished"]}, "Only http:// and https://"),
        ({"url": "file:///etc/passwd", "events": ["job.finished"]}, "Only http:// and https://"),
        ({"url": "http://user:pw@example.com/", "events": ["job.finished"]}, "user name"),
        ({"url": "http://127.0.0.1:99999/", "events": ["job.finished"]}, "port"),
        ({"url": "http:///x", "events": ["job.finished"]}, "no host"),
        ({"url": "http://[::1", "events": ["job.finished"]}, "malformed"),
        ({"url": "http://127.0.0.1/", "events": []}, "events"),
        ({"url": "http://127.0.0.1/", "events": ["job.started"]}, "events"),
        ({"events": ["job.finished"]}, "url"),
    ],
)
def test_bad_webhooks_are_refused_saying_why(alice, loopback_allowed, payload, message):
    response = alice.post("/api/webhooks/", payload, format="json")
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert Webhook.objects.count() == 0


def test_a_user_has_at_most_ten_webhooks(alice, owner, receiver, loopback_allowed):
    for _ in range(services.MAX_WEBHOOKS_PER_USER):
        services.webhook_create(owner=owner, url=receiver.url, events=["job.finished"])
    response = alice.post(
        "/api/webhooks/", {"url": receiver.url, "events": ["job.finished"]}, format="json"
    )
    assert response.status_code == 400
    assert "At most 10 webhooks" in response.json()["detail"]


def test_another_users_webhook_is_a_404(hook, other_user, staff):
    for client in (api_client(other_user), api_client(staff)):
        assert client.get(f"/api/webhooks/{hook.pk}/").status_code == 404
        assert client.get(f"/api/webhooks/{hook.pk}/deliveries/").status_code == 404
        assert client.delete(f"/api/webhooks/{hook.pk}/").status_code == 404
        assert client.get("/api/webhooks/").json()["count"] == 0
    assert Webhook.objects.filter(pk=hook.pk).exists()
    assert api_client().get("/api/webhooks/").status_code == 401


def test_deleting_a_webhook_stops_its_deliveries(alice, hook, owner, published, receiver, commit):
    with commit():
        succeed(create_job(owner))
    assert alice.delete(f"/api/webhooks/{hook.pk}/").status_code == 204
    assert services.webhook_delivery_attempt(delivery_id=published[0]) is None
    assert receiver.requests == []


# --- delivery: signature, timestamp, body ---------------------------------------------------


def test_a_finished_job_is_delivered_signed(owner, hook, receiver, published, commit):
    job = create_job(owner)
    with commit():
        succeed(job, labels=("cup", "spoon"))
    (delivery_id,) = published

    before = int(time.time())
    attempt = services.webhook_delivery_attempt(delivery_id=delivery_id)

    assert attempt.outcome == "success" and attempt.http_status == 200
    (request,) = receiver.requests
    headers, body = request["headers"], request["body"]
    expected = hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Segweb-Signature"] == f"sha256={expected}"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Segweb-Event"] == "job.finished"
    assert headers["X-Segweb-Delivery"] == str(delivery_id)
    data = json.loads(body)
    assert data["timestamp"] == int(headers["X-Segweb-Timestamp"])
    assert before <= data["timestamp"] <= time.time()
    assert data["event"] == "job.finished"
    assert data["delivery"] == str(delivery_id)
    assert data["job"]["id"] == str(job.pk)
    assert data["job"]["status"] == "succeeded"
    assert data["job"]["labels"] == ["cup", "spoon"]
    assert data["job"]["detections"] == 2
    assert data["job"]["url"] == f"/api/jobs/{job.pk}/"
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert delivery.status == "delivered"
    assert delivery.attempts == 1


def test_the_body_says_what_the_owner_may_see(owner, hook, staff, published, commit):
    low = create_job(owner, threshold=0.75)
    with commit():
        succeed(low, labels=("cup", "spoon", "knife"))  # scores 0.9, 0.8, 0.7: knife kept, below
    hidden = create_job(owner)
    services.job_hide(job=hidden, by=staff, reason="spam")  # then the admin's Run again
    with commit():
        succeed(hidden, labels=("cup",))

    bodies = {
        d.payload["job"]["id"]: d.payload["job"]
        for d in WebhookDelivery.objects.filter(webhook=hook)
    }
    assert bodies[str(hidden.pk)]["labels"] == [] and bodies[str(hidden.pk)]["hidden"] is True
    assert bodies[str(low.pk)]["hidden"] is False
    assert (bodies[str(low.pk)]["labels"], bodies[str(low.pk)]["detections"]) == (
        ["cup", "spoon"],
        2,
    )


def test_links_start_with_the_public_url_when_set(
    owner, hook, receiver, published, settings, commit
):
    settings.SEGWEB = {**settings.SEGWEB, "PUBLIC_URL": "https://segweb.example.com"}
    with commit():
        job = fail(create_job(owner), message="boom")
    services.webhook_delivery_attempt(delivery_id=published[0])

    data = json.loads(receiver.requests[0]["body"])
    assert data["job"]["page_url"] == f"https://segweb.example.com/jobs/{job.pk}/"
    assert data["job"]["status"] == "failed"
    assert data["job"]["error"] == "boom"


def test_a_changed_body_no_longer_matches_the_signature(owner, hook, receiver, published, commit):
    with commit():
        succeed(create_job(owner))
    services.webhook_delivery_attempt(delivery_id=published[0])
    body = receiver.requests[0]["body"]
    replayed = body.replace(b'"timestamp":', b'"timestamp":1')
    signature = receiver.requests[0]["headers"]["X-Segweb-Signature"]

    assert outbound.sign(body, hook.secret) == signature
    assert outbound.sign(replayed, hook.secret) != signature
    assert outbound.sign(body, "another secret") != signature


def test_webhooks_only_get_the_events_they_asked_for(
    owner, receiver, loopback_allowed, published, commit
):
    services.webhook_create(owner=owner, url=receiver.url, events=["collection.finished"])
    with commit():
        succeed(create_job(owner))
    assert published == []


def test_other_users_finished_jobs_are_not_sent_to_my_webhook(hook, other_user, published, commit):
    with commit():
        succeed(create_job(other_user))
    assert published == []


def test_a_collection_finishes_once_and_is_announced_once(owner, hook, receiver, published, commit):
    from tests.conftest import photo_upload
    from tests.photos import CHELSEA, COFFEE

    collection = services.collection_create_from_photos(
        owner=owner, uploads=[photo_upload(COFFEE), photo_upload(CHELSEA)], name="two"
    )
    first, second = collection.jobs.all()
    with commit():
        succeed(first)
    assert Collection.objects.get(pk=collection.pk).finished_at is None
    with commit():
        fail(second)
    assert services.collection_check_finished(collection_id=collection.pk) is False  # once only

    events = [WebhookDelivery.objects.get(pk=pk).event for pk in published]
    assert sorted(events) == ["collection.finished", "job.finished", "job.finished"]
    finished = WebhookDelivery.objects.get(event="collection.finished")
    services.webhook_delivery_attempt(delivery_id=finished.pk)
    data = json.loads(receiver.requests[0]["body"])
    assert data["collection"]["id"] == str(collection.pk)
    assert data["collection"]["status"] == "partial"
    assert data["collection"]["progress"] == {
        "total": 2, "queued": 0, "running": 0, "done": 1, "failed": 1
    }  # fmt: skip


def test_a_broken_webhook_table_never_fails_the_job(owner, hook, monkeypatch, commit):
    def broken(**kwargs):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(services, "_webhooks_announce", broken)
    job = create_job(owner)
    with commit():
        succeed(job)
    job.refresh_from_db()
    assert job.status == "succeeded"


# --- retries --------------------------------------------------------------------------------


def test_errors_are_retried_with_exponential_backoff_then_marked_failed(
    owner, hook, receiver, published, commit
):
    receiver.answers = [500] * services.DELIVERY_MAX_ATTEMPTS
    with commit():
        succeed(create_job(owner))
    delivery = WebhookDelivery.objects.get(pk=published[0])

    waits = []
    for _ in range(services.DELIVERY_MAX_ATTEMPTS):
        attempt = services.webhook_delivery_attempt(delivery_id=delivery.pk)
        assert attempt.outcome == "http_error"
        assert attempt.http_status == 500
        assert attempt.error == "HTTP 500 Internal Server Error"
        delivery.refresh_from_db()
        if delivery.next_attempt_at:
            waits.append(round((delivery.next_attempt_at - attempt.at).total_seconds()))
            # Not due yet: a second message for it (the sweep, a duplicate) does nothing.
            assert services.webhook_delivery_attempt(delivery_id=delivery.pk) is None
            due_now(delivery)

    assert waits == [30, 120, 480, 1920]  # the first within a minute, then x4 each time
    assert delivery.status == "failed"
    assert delivery.attempts == services.DELIVERY_MAX_ATTEMPTS
    assert len(receiver.requests) == services.DELIVERY_MAX_ATTEMPTS


def test_a_retry_that_succeeds_marks_the_delivery_delivered(
    owner, hook, receiver, published, commit
):
    receiver.answers = [503]
    with commit():
        succeed(create_job(owner))
    delivery = WebhookDelivery.objects.get(pk=published[0])
    services.webhook_delivery_attempt(delivery_id=delivery.pk)
    due_now(delivery)
    services.webhook_delivery_attempt(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert [a.outcome for a in delivery.attempt_log.all()] == ["http_error", "success"]
    first, second = receiver.requests
    assert first["headers"]["X-Segweb-Delivery"] == second["headers"]["X-Segweb-Delivery"]


def test_no_answer_is_an_error_retried_later(owner, hook, published, monkeypatch, commit):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    Webhook.objects.filter(pk=hook.pk).update(url=f"http://127.0.0.1:{port}/hook")
    with commit():
        succeed(create_job(owner))

    attempt = services.webhook_delivery_attempt(delivery_id=published[0])

    assert attempt.outcome == "network_error"
    assert attempt.error == "Could not connect."
    assert attempt.http_status is None
    assert WebhookDelivery.objects.get(pk=published[0]).status == "pending"


def test_a_slow_receiver_times_out(owner, hook, receiver, published, monkeypatch, commit):
    from urllib3.util import Timeout

    monkeypatch.setattr(outbound, "TIMEOUT", Timeout(connect=1, read=0.3, total=1))
    receiver.delay = 1.0
    with commit():
        succeed(create_job(owner))

    attempt = services.webhook_delivery_attempt(delivery_id=published[0])

    assert attempt.outcome == "network_error"
    assert attempt.error == "No answer within the timeout."


def test_redirects_are_not_followed(owner, hook, receiver, published, commit):
    receiver.answers = [302]
    with commit():
        succeed(create_job(owner))

    attempt = services.webhook_delivery_attempt(delivery_id=published[0])

    assert attempt.outcome == "http_error"
    assert attempt.error == "HTTP 302 Found (redirects are not followed)"
    assert len(receiver.requests) == 1  # the metadata address was never asked


def test_a_host_that_changes_its_answer_after_the_check_is_refused_at_connect(
    owner, hook, receiver, published, settings, monkeypatch, commit
):
    # DNS rebinding: the name resolves to a public address when checked, then to 127.0.0.1
    # when the connection is made. The address actually connected to is what is checked.
    port = receiver.server.server_port
    answers = iter(["93.184.216.34", "127.0.0.1"])

    def rebinding(host, port_, *args, **kwargs):
        assert host == "rebind.example.com"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers, "127.0.0.1"), port_))]

    Webhook.objects.filter(pk=hook.pk).update(url=f"http://rebind.example.com:{port}/hook")
    settings.SEGWEB = {**settings.SEGWEB, "WEBHOOK_ALLOW_LOOPBACK": False}
    with commit():
        succeed(create_job(owner))
    monkeypatch.setattr(socket, "getaddrinfo", rebinding)

    attempt = services.webhook_delivery_attempt(delivery_id=published[0])

    assert attempt.outcome == "refused"
    assert "127.0.0.1 is a loopback address" in attempt.error
    assert receiver.requests == []


def test_the_sweep_publishes_due_retries_and_lost_first_attempts(owner, hook, published, commit):
    with commit():
        succeed(create_job(owner))
    delivery = WebhookDelivery.objects.get(pk=published[0])
    published.clear()

    assert services.webhooks_sweep() == 0  # just created: its own message is on its way
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        created_at=timezone.now() - timedelta(minutes=1)
    )
    assert services.webhooks_sweep() == 1
    assert published == [delivery.pk]
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() + timedelta(seconds=30)
    )
    assert services.webhooks_sweep() == 0  # a retry not due yet is left alone
    assert published == [delivery.pk]


def test_the_sweep_forgets_finished_deliveries_after_thirty_days(owner, hook, published, commit):
    with commit():
        old, recent, pending = (succeed(create_job(owner)) for _ in range(3))
    deliveries = WebhookDelivery.objects.filter(webhook=hook)
    assert deliveries.count() == 3
    long_ago = timezone.now() - timedelta(days=31)
    by_job = {d.payload["job"]["id"]: d for d in deliveries}
    finished = WebhookDelivery.Status.DELIVERED
    deliveries.filter(pk=by_job[str(old.pk)].pk).update(status=finished, finished_at=long_ago)
    deliveries.filter(pk=by_job[str(recent.pk)].pk).update(
        status=finished, finished_at=timezone.now() - timedelta(days=29)
    )
    deliveries.filter(pk=by_job[str(pending.pk)].pk).update(created_at=long_ago)

    services.webhooks_sweep()

    kept = {d.payload["job"]["id"] for d in WebhookDelivery.objects.filter(webhook=hook)}
    assert kept == {str(recent.pk), str(pending.pk)}


# --- the deliveries log ---------------------------------------------------------------------


def test_the_deliveries_log_lists_every_attempt(alice, owner, hook, receiver, published, commit):
    receiver.answers = [500]
    with commit():
        succeed(create_job(owner))
    delivery = WebhookDelivery.objects.get(pk=published[0])
    services.webhook_delivery_attempt(delivery_id=delivery.pk)
    due_now(delivery)
    services.webhook_delivery_attempt(delivery_id=delivery.pk)

    body = alice.get(f"/api/webhooks/{hook.pk}/deliveries/").json()

    (listed,) = body["results"]
    assert listed["status"] == "delivered"
    assert [(a["number"], a["outcome"], a["http_status"]) for a in listed["attempt_log"]] == [
        (1, "http_error", 500),
        (2, "success", 200),
    ]
    assert listed["attempt_log"][0]["error"] == "HTTP 500 Internal Server Error"
    assert WebhookAttempt.objects.count() == 2


def test_a_job_the_sweep_fails_is_announced(owner, hook, published, commit):
    job = create_job(owner)
    services.job_claim(job_id=job.pk)
    stale = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=stale, attempts=F("attempt_limit"))
    with commit():
        assert services.jobs_sweep(publish=lambda _id: None)["failed"] == 1

    (delivery,) = WebhookDelivery.objects.filter(pk__in=published)
    assert delivery.payload["job"]["status"] == "failed"


def test_cancelling_the_last_queued_jobs_finishes_the_collection(owner, hook, published, commit):
    from tests.conftest import photo_upload

    collection = services.collection_create_from_photos(
        owner=owner, uploads=[photo_upload(), photo_upload()]
    )
    with commit():
        assert services.collection_cancel(collection=collection) == 2

    (delivery,) = WebhookDelivery.objects.filter(pk__in=published)
    assert delivery.event == "collection.finished"
    assert delivery.payload["collection"]["status"] == "failed"
