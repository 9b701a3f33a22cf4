"""REST API routes, under /api/."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.register("jobs", views.JobViewSet, basename="api-job")
router.register("exports", views.ExportViewSet, basename="api-export")
router.register("collections", views.CollectionViewSet, basename="api-collection")
router.register("webhooks", views.WebhookViewSet, basename="api-webhook")

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    path("auth/token/rotate/", views.TokenRotateView.as_view(), name="api-token-rotate"),
    path("auth/tokens/", views.TokensView.as_view(), name="api-tokens"),
    path("models/", views.ModelsView.as_view(), name="api-models"),
    path("labels/", views.LabelsView.as_view(), name="api-labels"),
    *router.urls,
    path(
        "jobs/<uuid:pk>/instances/<int:index>/<str:kind>/",
        views.InstanceFileView.as_view(),
        name="api-job-instance",
    ),
    path("jobs/<uuid:pk>/<str:kind>/", views.JobFileView.as_view(), name="api-job-file"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its start-up script as a file: the CSP allows no inline script.
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(
            url_name="schema", template_name="segmentation/swagger_ui.html"
        ),
        name="swagger-ui",
    ),
]
