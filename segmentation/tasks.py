"""Queue entry points: thin wrappers that hand an id to the services."""

from celery import shared_task

from . import services


@shared_task(name="segmentation.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> None:
    services.job_run(job_id=job_id)


@shared_task(name="segmentation.sweep_jobs", ignore_result=True)
def sweep_jobs() -> dict:
    return services.jobs_sweep()


# One POST with a 10-second budget (outbound.TIMEOUT); the hard limits only stop a receiver
# that drips its answer byte by byte. Retries are the delivery's own (services), not Celery's.
@shared_task(name="segmentation.deliver_webhook", ignore_result=True, soft_time_limit=30,
             time_limit=60)  # fmt: skip
def deliver_webhook(delivery_id: str) -> None:
    services.webhook_delivery_attempt(delivery_id=delivery_id)


@shared_task(name="segmentation.sweep_webhooks", ignore_result=True)
def sweep_webhooks() -> int:
    return services.webhooks_sweep()
