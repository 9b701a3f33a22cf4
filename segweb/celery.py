"""The Celery app. Workers: ``celery -A segweb worker`` (``make run`` starts one for you)."""

import os

from celery import Celery
from celery.signals import worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "segweb.settings")

app = Celery("segweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def share_the_cores_between_pool_processes(sender, **_kwargs) -> None:
    """With N prefork processes, give each cores / N torch and OpenVINO threads, unless set.

    Runs in the parent before it forks, so every pool process inherits it. N processes that each
    use every core contend for them; measured on 2 cores, 2 processes x 1 thread completed 1.26x
    the jobs/min of 1 x 2 threads (2.4x on a busy machine; bench/workers.py). A threads pool
    shares one process, and so one model, and keeps every core.
    """
    processes = sender.concurrency if "prefork" in str(sender.pool_cls) else 1
    if isinstance(processes, int) and processes > 1:
        per_process = str(max(1, len(os.sched_getaffinity(0)) // processes))
        os.environ.setdefault("SEGWEB_TORCH_THREADS", per_process)
        os.environ.setdefault("SEGWEB_OPENVINO_THREADS", per_process)


@worker_process_init.connect
def load_model_in_each_worker_process(**_kwargs) -> None:
    """Load the default model in every worker process as it starts, not on its first job.

    Done in the child, after the fork: a CUDA context or torch's thread pools must never be
    created before forking.
    """
    from segmentation.services import warm_up_worker

    warm_up_worker()
