"""The console's site-wide parts: branding, and the third-party admins on the theme.

django-unfold styles only the ModelAdmins built on `unfold.admin.ModelAdmin`. The admins that
Django (users, groups), DRF (tokens), django-celery-beat (schedules) and django-celery-results
(task results) register are re-registered here as subclasses of their own class and unfold's, so
they keep every behaviour of their package and look like the rest of the console. Imported by
agents_app.admin: agents_app is the last app, so those packages have registered by then.
"""

from django.contrib import admin
from django.contrib.admin.options import InlineModelAdmin
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django_celery_beat.admin import PeriodicTaskForm
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from django_celery_results.models import GroupResult, TaskResult
from rest_framework.authtoken.models import TokenProxy
from unfold.admin import ModelAdmin, StackedInline, TabularInline
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm
from unfold.widgets import UnfoldAdminSelectWidget, UnfoldAdminTextInputWidget

admin.site.site_header = "Stencil"
admin.site.site_title = "Stencil"
admin.site.index_title = "Dashboard"


def _themed_inline(inline: type[InlineModelAdmin]) -> type[InlineModelAdmin]:
    base = StackedInline if issubclass(inline, admin.StackedInline) else TabularInline
    return type(inline.__name__, (inline, base), {"__module__": __name__})


def rethemed(model, **attrs) -> None:
    """Register `model` again with its current admin class mixed with unfold's ModelAdmin."""
    current = type(admin.site._registry[model])
    inlines = [_themed_inline(inline) for inline in getattr(current, "inlines", ())]
    themed = type(
        current.__name__,
        (current, ModelAdmin),
        {"__module__": __name__, "inlines": inlines, **attrs},
    )
    admin.site.unregister(model)
    admin.site.register(model, themed)


class UserAdmin(BaseUserAdmin, ModelAdmin):
    # unfold's forms: the password fields and the hash widget in the theme's style.
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm


class GroupAdmin(BaseGroupAdmin, ModelAdmin):
    pass


class ThemedPeriodicTaskForm(PeriodicTaskForm):
    """django-celery-beat's form with its two task fields in the theme's widgets (its own
    TaskSelectWidget lists the registered tasks; only its look changes)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["task"].widget = UnfoldAdminTextInputWidget()
        regtask = self.fields["regtask"]
        choices = list(regtask.widget.choices)
        regtask.widget = UnfoldAdminSelectWidget(choices=choices)


for user_model, user_admin in ((User, UserAdmin), (Group, GroupAdmin)):
    if admin.site.is_registered(user_model):
        admin.site.unregister(user_model)
    admin.site.register(user_model, user_admin)

rethemed(PeriodicTask, form=ThemedPeriodicTaskForm)
for schedule in (ClockedSchedule, CrontabSchedule, SolarSchedule, IntervalSchedule):
    rethemed(schedule)
for result in (TaskResult, GroupResult, TokenProxy):
    rethemed(result)
