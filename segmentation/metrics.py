"""``/metrics``: Prometheus' text format, computed from the database at scrape time.

Why from the database, not counters in each process (prometheus-client's multiprocess mode):
segweb's state already lives in one place that every gunicorn process, Celery process and
machine shares. Counting there needs no shared directory of per-process files (which only works
on one machine, must be wiped at each start and leaks files when gunicorn replaces workers), is
right however many web and worker processes or machines run, survives restarts, and any web
process can answer a scrape with the same numbers. The price is a few aggregate queries per
scrape over the jobs table (one indexed count by status and model; one pass over finished jobs
for the histograms): docs/benchmarks.md has its cost.

Counters that Prometheus sees go down when rows are deleted (deleted jobs leave the histograms):
Prometheus treats that as a counter reset. Refused uploads have no row of their own and are
counted in ``RefusedUploadCount`` by the services.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Min, Q, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from .models import Job, RefusedUploadCount, WebhookAttempt, WebhookDelivery

# Seconds. A photo takes ~1 s of inference on 2 CPU cores, 50-70 ms on a GPU, up to the
# 600-second job time limit for a huge one on a busy machine.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


def exposition() -> tuple[bytes, str]:
    """The body and content type of a scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


class DatabaseCollector:
    """A prometheus-client collector whose values are queried when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        yield from _jobs()
        yield from _queue()
        yield from _durations()
        yield from _refusals()
        yield from _webhooks()


def _jobs() -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "segweb_jobs", "Jobs in the database by status and model.", labels=["status", "model"]
    )
    rows = Job.objects.order_by().values("status", "model").annotate(n=Count("pk"))
    seen = {(row["status"], row["model"]): row["n"] for row in rows}
    for status in Job.Status.values:  # every status shown, even at 0, so alerts can match it
        if not any(s == status for s, _ in seen):
            seen[(status, "")] = 0
    for (status, model), n in sorted(seen.items()):
        jobs.add_metric([status, model], n)
    yield jobs


def _queue() -> Iterator[Metric]:
    queued = Job.objects.filter(status=Job.Status.QUEUED).aggregate(
        n=Count("pk"), oldest=Min("created_at")
    )
    yield GaugeMetricFamily("segweb_queue_depth", "Jobs waiting for a worker.", value=queued["n"])
    age = (timezone.now() - queued["oldest"]).total_seconds() if queued["oldest"] else 0.0
    yield GaugeMetricFamily(
        "segweb_queue_oldest_age_seconds",
        "How long the oldest queued job has waited (0 when none waits).",
        value=max(age, 0.0),
    )
    running = Job.objects.filter(status=Job.Status.RUNNING).count()
    yield GaugeMetricFamily("segweb_jobs_running", "Jobs a worker is running.", value=running)


def _durations() -> Iterator[Metric]:
    histograms = (
        ("segweb_job_duration_seconds", "total_ms",
         "Time a worker spent on each succeeded job (read, segment, overlay, store)."),
        ("segweb_job_inference_seconds", "inference_ms",
         "Time the model took on each succeeded job."),
    )  # fmt: skip
    for name, field, documentation in histograms:
        aggregates = {
            f"le_{i}": Count("pk", filter=Q(**{f"{field}__lte": bound * 1000}))
            for i, bound in enumerate(DURATION_BUCKETS)
        }
        rows = (
            Job.objects.filter(status=Job.Status.SUCCEEDED, **{f"{field}__isnull": False})
            .order_by()
            .values("model")
            .annotate(n=Count("pk"), total=Sum(field), **aggregates)
        )
        family = HistogramMetricFamily(name, documentation, labels=["model"])
        for row in rows:
            buckets = [(floatToGoString(b), row[f"le_{i}"]) for i, b in enumerate(DURATION_BUCKETS)]
            buckets.append(("+Inf", row["n"]))
            family.add_metric([row["model"]], buckets, sum_value=(row["total"] or 0) / 1000)
        yield family


def _refusals() -> Iterator[Metric]:
    refused = CounterMetricFamily(
        "segweb_uploads_refused",
        "Photos and archives refused, by reason.",
        labels=["reason"],
    )
    for reason, count in RefusedUploadCount.objects.order_by("reason").values_list(
        "reason", "count"
    ):
        refused.add_metric([reason], count)
    yield refused


def _webhooks() -> Iterator[Metric]:
    # A gauge, not a counter: finished deliveries and their attempts are pruned after 30 days
    # (services.DELIVERY_KEPT), and a counter that goes down reads as a reset.
    attempts = GaugeMetricFamily(
        "segweb_webhook_attempts",
        "Webhook POSTs on record (the last 30 days), by outcome (success, http_error, "
        "network_error, refused).",
        labels=["outcome"],
    )
    counts = dict(WebhookAttempt.objects.order_by().values_list("outcome").annotate(n=Count("pk")))
    for outcome in WebhookAttempt.Outcome.values:
        attempts.add_metric([outcome], counts.get(outcome, 0))
    yield attempts
    deliveries = GaugeMetricFamily(
        "segweb_webhook_deliveries",
        "Webhook deliveries by state: pending (being tried), delivered, failed (gave up).",
        labels=["status"],
    )
    counts = dict(WebhookDelivery.objects.order_by().values_list("status").annotate(n=Count("pk")))
    for status in WebhookDelivery.Status.values:
        deliveries.add_metric([status], counts.get(status, 0))
    yield deliveries
