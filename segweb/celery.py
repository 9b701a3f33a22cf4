"""The Celery app. Workers: ``celery -A segweb worker`` (``make run`` starts one for you)."""

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "segweb.settings")

app = Celery("segweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def load_model_in_each_worker_process(**_kwargs) -> None:
    """Load the default model in every worker process as it starts, not on its first job.

    Done in the child, after the fork: a CUDA context or torch's thread pools must never be
    created before forking.
    """
    from segmentation.services import warm_up_worker

    warm_up_worker()
