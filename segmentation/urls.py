from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("upload/", views.upload, name="upload"),
    path("jobs/", views.job_list, name="job-list"),
    path("exports/", views.export_list, name="export-list"),
    path("exports/new/", views.export_create, name="export-create"),
    path("jobs/<uuid:pk>/", views.job_detail, name="job-detail"),
    path("jobs/<uuid:pk>/status/", views.job_status, name="job-status"),
    path("jobs/<uuid:pk>/delete/", views.job_delete, name="job-delete"),
    path("jobs/<uuid:pk>/retry/", views.job_retry, name="job-retry"),
    path("jobs/<uuid:pk>/coco.json", views.job_coco, name="job-coco"),
    path("jobs/<uuid:pk>/<str:kind>/", views.job_file, name="job-file"),
    path("collections/", views.collection_list, name="collection-list"),
    path("collections/<uuid:pk>/", views.collection_detail, name="collection-detail"),
    path("collections/<uuid:pk>/cancel/", views.collection_cancel, name="collection-cancel"),
    path("collections/<uuid:pk>/retry/", views.collection_retry, name="collection-retry"),
    path("collections/<uuid:pk>/delete/", views.collection_delete, name="collection-delete"),
    path("account/", views.account, name="account"),
    path("account/webhooks/<uuid:pk>/delete/", views.webhook_delete, name="webhook-delete"),
    path("account/tokens/<str:digest>/revoke/", views.token_revoke, name="token-revoke"),
    path("account/tokens/revoke/", views.tokens_revoke, name="tokens-revoke"),
    path("metrics", views.metrics_view, name="metrics"),
    path("signup/", views.signup, name="signup"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
]
