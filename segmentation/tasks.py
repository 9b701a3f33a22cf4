"""Queue entry points: thin wrappers that hand a job id to the services."""

from celery import shared_task

from . import services


@shared_task(name="segmentation.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> None:
    services.job_run(job_id=job_id)


@shared_task(name="segmentation.sweep_jobs", ignore_result=True)
def sweep_jobs() -> dict:
    return services.jobs_sweep()
