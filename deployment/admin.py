"""Software packages in the admin, read-only: registrations are made through the API and decided
in the approval queue (/admin/approvals/?kind=software_package)."""

from django.contrib import admin

from deployment.models import SoftwarePackage
from rmm.access.admin_base import RoleAdmin
from rmm.artefacts.models import DECISION_FIELDS


@admin.register(SoftwarePackage)
class SoftwarePackageAdmin(RoleAdmin):
    list_display = ["name", "version", "revision", "installer_type", "approval_status", "size", "author", "created_at"]
    list_filter = ["approval_status", "installer_type"]
    search_fields = ["name", "hash"]
    readonly_fields = [
        "name",
        "version",
        "revision",
        "installer_type",
        "silent_args",
        "uninstall_args",
        "detection",
        "installer_uri",
        "hash",
        "size",
        "filename",
        *DECISION_FIELDS,
    ]
    fields = readonly_fields
