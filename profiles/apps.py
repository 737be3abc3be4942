from django.apps import AppConfig


class ProfilesConfig(AppConfig):
    name = "profiles"
    label = "profiles"
    verbose_name = "Configuration profiles"

    def ready(self):
        from evidence import types
        from profiles import artefact, audits, compliance, enforcement, kind  # noqa: F401 - kind: the job kinds
        from rmm.artefacts import registry as artefacts
        from rmm.console import panels
        from rmm.outbox import services as outbox

        artefacts.register(artefact.CONFIG_KEY)
        types.register(audits.AUDIT_RESULT, "What a configuration audit read on an asset and each item's verdict")
        types.register(
            audits.DRIFT_REPORT, "Items of a profile whose compliance changed on an asset, found by an audit"
        )
        types.register(
            enforcement.ENFORCEMENT_RESULT,
            "An enforcement of a drifted item: the value before, the set script run, and the fresh read after",
        )
        outbox.register(audits.DRIFT_DETECTED, "An audit found items of a profile that no longer comply on an asset")
        outbox.register(audits.DRIFT_RESOLVED, "An audit found drifted items of a profile complying again")
        panels.register_asset_panel(
            panels.AssetPanel("Configuration compliance", "profiles/asset_panel.html", compliance.asset_panel)
        )
