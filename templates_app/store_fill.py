"""A new image store gets the catalogue (CloudStack's #2689: there, a new store only receives
existing templates after a restart).

Whatever creates an image store (the API, the admin, a command, a fixture) saves a row; the
catalogue's own post_save receiver queues `image_store_fill_task` once that commits, and the
storage worker runs `image_store_fill`: every template that belongs on the store gets a copy row
(NOT_DOWNLOADED), filled like any download by `store_copy_download`, store to store from a READY
copy of the zone, else of another zone, else from the URL. Progress shows on the copy rows.
"""

from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet

from .choices import DownloadState, ImageStoreState, StoreRefState, TemplateState
from .events import build_event, record_events
from .locks import lock_templates
from .models import ImageStore, Template, TemplateStoreRef

BATCH_SIZE = 500
FAILED = (
    DownloadState.DOWNLOAD_ERROR,
    DownloadState.ABANDONED,
    DownloadState.UPLOAD_ERROR,
    DownloadState.UPLOAD_ABANDONED,
)
LIVE_STATES = (StoreRefState.ALLOCATED, StoreRefState.CREATING, StoreRefState.READY)


def templates_wanted_by(store: ImageStore) -> QuerySet[Template]:
    """The ACTIVE, non-direct-download templates of the store's zone (or of every zone) that
    have no copy on it yet and something to copy from (a READY copy somewhere, or a URL):

    - every public one (a registration puts them on every store of a zone);
    - a private one only when no other store of the zone holds a copy that is READY or on its
      way (a private template lives on one random store per zone: it comes here only if the
      zone has lost it, or never had a store to put it on).
    """
    copies = TemplateStoreRef.objects.filter(template_id=OuterRef("pk"), store__isnull=False)
    in_zone = Template.zones.through.objects.filter(
        template_id=OuterRef("pk"), zone_id=store.zone_id
    )
    live_in_zone = (
        copies.filter(store__zone_id=store.zone_id, state__in=LIVE_STATES)
        .exclude(store_id=store.pk)
        .exclude(store__state=ImageStoreState.DISABLED)
        .exclude(download_state__in=FAILED)
    )
    ready_somewhere = copies.filter(state=StoreRefState.READY).exclude(
        store__state=ImageStoreState.DISABLED
    )
    return (
        Template.objects.filter(state=TemplateState.ACTIVE, direct_download=False)
        .filter(Q(cross_zones=True) | Q(Exists(in_zone)))
        .filter(~Q(url="") | Q(Exists(ready_somewhere)))
        .exclude(Exists(copies.filter(store_id=store.pk)))
        .filter(Q(is_public=True) | ~Q(Exists(live_in_zone)))
        .order_by("pk")
    )


def image_store_fill(*, store_id: int) -> list[int]:
    """Queue a copy on the store of every template that belongs there (`templates_wanted_by`);
    the ids of the new copy rows. Batches of BATCH_SIZE templates, each locked (template ->
    copy, the one lock order), re-checked and written in its own transaction, downloads queued
    after each commit. A repeat (redelivered task) finds nothing left to queue."""
    store = ImageStore.objects.select_related("zone").filter(pk=store_id).first()
    if store is None or store.state != ImageStoreState.UP:
        return []
    created: list[int] = []
    last_id = 0
    while True:
        batch = list(
            templates_wanted_by(store)
            .filter(pk__gt=last_id)
            .values_list("pk", flat=True)[:BATCH_SIZE]
        )
        if not batch:
            return created
        last_id = batch[-1]
        created += _queue_batch(store, batch)


@transaction.atomic
def _queue_batch(store: ImageStore, template_ids: list[int]) -> list[int]:
    from .tasks import store_copy_download_task

    locked = [template.pk for template in lock_templates(template_ids)]
    # A new statement after the locks: a delete or another fill that committed first is seen.
    wanted = list(templates_wanted_by(store).filter(pk__in=locked))
    refs = TemplateStoreRef.objects.bulk_create(
        [TemplateStoreRef(template=template, store=store) for template in wanted]
    )
    record_events(
        build_event(
            template,
            from_state=template.state,
            to_state=template.state,
            actor_label="store-fill",
            reason=f"copy queued on new image store '{store}'",
        )
        for template in wanted
    )
    ids = [ref.pk for ref in refs]
    transaction.on_commit(lambda: [store_copy_download_task.delay(ref_id=ref_id) for ref_id in ids])
    return ids


def on_image_store_saved(sender, instance: ImageStore, created: bool, raw: bool = False, **_):
    """post_save of ImageStore (connected in TemplatesAppConfig.ready): a new store, from any
    path that creates one, gets the catalogue once its row has committed."""
    if not created or raw:
        return
    from .tasks import image_store_fill_task

    store_id = instance.pk
    transaction.on_commit(lambda: image_store_fill_task.delay(store_id=store_id))
