"""VMs and VM pools follow a channel of their lineage: 'latest' (the former
use_latest_template_version flag), 'stable', 'canary' or a custom one."""

from django.db import migrations, models

FOLLOWERS = ("VirtualMachine", "VmPool")


def latest_flag_to_channel(apps, schema_editor):
    for model in FOLLOWERS:
        apps.get_model("agents_app", model).objects.filter(use_latest_template_version=True).update(
            follow_channel="latest"
        )


def channel_to_latest_flag(apps, schema_editor):
    for model in FOLLOWERS:
        apps.get_model("agents_app", model).objects.filter(follow_channel="latest").update(
            use_latest_template_version=True
        )


class Migration(migrations.Migration):
    dependencies = [
        ("agents_app", "0013_reaper_schedule"),
    ]

    operations = [
        migrations.AddField(
            model_name="virtualmachine",
            name="follow_channel",
            field=models.CharField(
                blank=True,
                help_text="The channel of its template's lineage it follows (stateless only): "
                "'latest' (the newest ACTIVE version), 'stable', 'canary' or the owner's own; "
                "when the channel moves it is rebuilt onto its version if stopped, or when it "
                "next stops. Empty: it keeps its version.",
                max_length=32,
            ),
        ),
        migrations.AddField(
            model_name="vmpool",
            name="follow_channel",
            field=models.CharField(
                blank=True,
                help_text="The channel of its lineage its VMs follow ('latest', 'stable', "
                "'canary', ...); empty: the version it names.",
                max_length=32,
            ),
        ),
        migrations.RunPython(latest_flag_to_channel, channel_to_latest_flag),
        migrations.RemoveField(model_name="virtualmachine", name="use_latest_template_version"),
        migrations.RemoveField(model_name="vmpool", name="use_latest_template_version"),
    ]
