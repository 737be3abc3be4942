from django.apps import AppConfig


class PatchingConfig(AppConfig):
    name = "patching"
    label = "patching"
    verbose_name = "Patching"

    def ready(self):
        from evidence import types
        from patching import kind, selectors  # kind registers the "patch_scan" and "patch" job kinds
        from rmm.console import panels

        types.register(kind.SCAN_RESULT, "What a patch scan reported and what it changed of the asset's patch state")
        types.register(kind.PATCH_RESULT, "A patch job's install and re-scan on one asset")
        panels.register_asset_panel(panels.AssetPanel("Patches", "patching/asset_panel.html", selectors.asset_panel))
