"""/api/v1/ routes."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from agents_app.api.certificate_views import DirectDownloadCertificateViewSet
from agents_app.api.views import (
    HostViewSet,
    PoolCopyViewSet,
    PrimaryPoolViewSet,
    VirtualMachineViewSet,
    VmPoolViewSet,
)
from templates_app.api.copy_views import StoreCopyViewSet
from templates_app.api.extract_views import extract_download
from templates_app.api.sweep_views import GcSweepRunViewSet, GcSweepView
from templates_app.api.upload_views import upload_template_bytes
from templates_app.api.views import (
    AccountViewSet,
    EventViewSet,
    ImageStoreViewSet,
    ZoneViewSet,
)
from versions_app.api.views import TemplateViewSet

router = DefaultRouter()
router.register("templates", TemplateViewSet, basename="template")
router.register("zones", ZoneViewSet, basename="zone")
router.register("image-stores", ImageStoreViewSet, basename="image-store")
router.register("accounts", AccountViewSet, basename="account")
router.register("events", EventViewSet, basename="event")
router.register("gc/sweeps", GcSweepRunViewSet, basename="gc-sweep-run")
router.register("store-copies", StoreCopyViewSet, basename="store-copy")
router.register("vms", VirtualMachineViewSet, basename="vm")
router.register("vm-pools", VmPoolViewSet, basename="vm-pool")
router.register("hosts", HostViewSet, basename="host")
router.register("primary-pools", PrimaryPoolViewSet, basename="primary-pool")
router.register("pool-copies", PoolCopyViewSet, basename="pool-copy")
router.register(
    "direct-download-certificates",
    DirectDownloadCertificateViewSet,
    basename="direct-download-certificate",
)

urlpatterns = [
    path("gc/sweep/", GcSweepView.as_view(), name="gc-sweep"),
    path("uploads/<uuid:template_id>/", upload_template_bytes, name="template-upload"),
    path(
        "extracts/<uuid:template_id>/<int:ref_id>/<str:filename>",
        extract_download,
        name="template-extract-download",
    ),
    *router.urls,
]
