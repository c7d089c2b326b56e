"""Top-level URLs: admin, the versioned REST API and its documentation."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from templates_app.admin_progress import progress_view
from templates_app.cloudstack.views import client_api

# Only processes that serve requests load the admin modules (project/admin_apps.py).
admin.autodiscover()

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/stencil/progress/", progress_view, name="stencil-progress"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("project.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("client/api", client_api, name="cloudstack-api"),
]

handler404 = "templates_app.api.errors.not_found"
