from django.apps import AppConfig


class PatchingConfig(AppConfig):
    name = "patching"
    label = "patching"
    verbose_name = "Patching"

    def ready(self):
        from evidence import types
        from patching import findings, kind, selectors  # kind registers the "patch_scan" and "patch" job kinds
        from rmm.console import panels
        from rmm.engine.services import cases
        from rmm.outbox import services as outbox

        types.register(kind.SCAN_RESULT, "What a patch scan reported and what it changed of the asset's patch state")
        types.register(kind.PATCH_RESULT, "A patch job's install and re-scan on one asset")
        types.register(findings.SCAN_VERIFICATION, "A scanner's verification (or a pen tester's retest) of a fix")
        outbox.register(findings.VERIFICATION_REQUESTED, "A patch job's re-scan shows a finding's fix: verify it")
        outbox.register(findings.PATCH_VERIFIED, "The scanner verified a finding's fix: the patch is proven")
        outbox.register(findings.REOPENED, "A finding's verification failed: the finding is open again")
        cases.hold_case_while(findings.case_has_unverified_findings)
        panels.register_asset_panel(panels.AssetPanel("Patches", "patching/asset_panel.html", selectors.asset_panel))
