"""Recompute every job's class counts and every user's class summary from the detections."""

from django.core.management.base import BaseCommand

from segmentation import services


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options) -> None:
        services.class_counts_rebuild()
        self.stdout.write("Class counts rebuilt.")
