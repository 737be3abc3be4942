"""The console's script library: every script version with its approval state, a version's page
(its content and its diff against the previous version), and the editor that writes a NEW version
through :func:`scripting.services.create_script` (a version is never edited in place)."""

from __future__ import annotations

import contextlib
import difflib
import uuid

import django_filters
import django_tables2 as tables
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render

from rmm.access import roles as access
from rmm.artefacts.states import ApprovalStatus
from rmm.console import lists
from rmm.console.lists import ListTable
from rmm.core.errors import Forbidden, ServiceError
from rmm.engine import services as engine
from scripting import services
from scripting.models import Language, Script

STATE_WORDS = {
    ApprovalStatus.PENDING: "pending approval",
    ApprovalStatus.APPROVED: "approved",
    ApprovalStatus.REJECTED: "rejected",
}


def visible_scripts():
    """Scripts are not a site's: every signed-in role may read every version (as the API does)."""
    return Script.objects.select_related("author", "decided_by")


class ScriptFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(
        label="Search", field_name="name", lookup_expr="icontains", widget=forms.TextInput(attrs={"type": "search"})
    )
    approval_status = django_filters.ChoiceFilter(
        label="Approval state", choices=list(STATE_WORDS.items()), empty_label="any"
    )
    language = django_filters.ChoiceFilter(label="Language", choices=Language.choices, empty_label="any")


class ScriptTable(ListTable):
    name = tables.Column(
        verbose_name="Script",
        linkify=("scripting:version", {"script_id": tables.A("pk")}),
        order_by=("name", "-version"),
    )
    version = tables.Column(verbose_name="Version", order_by=("version", "name"))
    language = tables.Column(verbose_name="Language")
    approval_status = tables.Column(verbose_name="Approval state", order_by=("approval_status", "name", "-version"))
    privileged = tables.BooleanColumn(verbose_name="Privileged", yesno="yes,no")
    requires_approval = tables.BooleanColumn(verbose_name="Each job approved", yesno="yes,no")
    author = tables.Column(verbose_name="Author", accessor="author__username", order_by=("author__username", "name"))
    created_at = tables.DateTimeColumn(format="Y-m-d H:i", verbose_name="Written", order_by=("created_at", "name"))

    class Meta(ListTable.Meta):
        attrs = {"class": "list", "id": "scripts"}
        order_by = ("name",)
        empty_text = "No scripts match."
        row_attrs = {"data-script-id": lambda record: record.pk}

    def render_approval_status(self, value, record):
        return STATE_WORDS.get(record.approval_status, value)


@login_required
def script_library(request):
    """Every script version and its approval state; authors see the way to a new script."""
    filterset = ScriptFilter(request.GET, queryset=visible_scripts())
    context = {"nav": "scripts", "may_author": access.can(request.user, "author_scripts")}
    return lists.list_page(request, ScriptTable, filterset, "scripting/library.html", context)


def script_diff(older: Script | None, newer: Script) -> list[tuple[str, str]]:
    """The unified diff of ``newer`` against ``older`` as (kind, line) pairs: kind is ``added``,
    ``removed``, ``hunk`` or ``same``; the template escapes the lines."""
    if older is None:
        return []
    lines = difflib.unified_diff(
        older.content.splitlines(),
        newer.content.splitlines(),
        fromfile=f"{older.name} v{older.version}",
        tofile=f"{newer.name} v{newer.version}",
        lineterm="",
    )
    kinds = []
    for line in lines:
        if line.startswith(("---", "+++")):
            kinds.append(("file", line))
        elif line.startswith("@@"):
            kinds.append(("hunk", line))
        elif line.startswith("+"):
            kinds.append(("added", line))
        elif line.startswith("-"):
            kinds.append(("removed", line))
        else:
            kinds.append(("same", line))
    return kinds


@login_required
def script_version(request, script_id):
    """One version: its content, state, who decided it, and its diff against the previous one."""
    script = visible_scripts().filter(pk=script_id).first()
    if script is None:
        raise Http404
    previous = Script.objects.filter(name=script.name, version__lt=script.version).order_by("-version").first()
    versions = Script.objects.filter(name=script.name).order_by("-version").only("id", "version", "approval_status")
    return render(
        request,
        "scripting/version.html",
        {
            "nav": "scripts",
            "script": script,
            "state": STATE_WORDS.get(script.approval_status, script.approval_status),
            "previous": previous,
            "diff": script_diff(previous, script),
            "versions": [(v, STATE_WORDS.get(v.approval_status, v.approval_status)) for v in versions],
            "may_author": access.can(request.user, "author_scripts"),
        },
    )


class ScriptForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="The same name as an existing script makes its next version.")
    language = forms.ChoiceField(choices=Language.choices, label="Language (interpreter)")
    content = forms.CharField(widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false"}), strip=False)
    timeout_seconds = forms.IntegerField(min_value=1, max_value=24 * 3600, label="Timeout (seconds)")
    privileged = forms.BooleanField(required=False, help_text="Runs as root/SYSTEM.")
    requires_approval = forms.BooleanField(
        required=False, label="Each job needs approval", help_text="Every job of this version waits for an approver."
    )


def _refuse_unless_author(user) -> None:
    """Only the roles that may author scripts reach the editor; the refusal is recorded."""
    try:
        engine.require_role(user, "author_scripts", "script.create")
    except Forbidden as exc:
        raise PermissionDenied(exc.detail) from None


@login_required
def script_editor(request):
    """Write a new version: from scratch, or from an existing version (``?from=<id>``), whose
    content fills the form. Saving always makes the next version, pending approval."""
    _refuse_unless_author(request.user)
    base = None
    if request.GET.get("from"):
        with contextlib.suppress(ValueError):
            base = visible_scripts().filter(pk=uuid.UUID(request.GET["from"])).first()
        if base is None:
            raise Http404
    initial = {"timeout_seconds": settings.RMM_DEFAULT_TIMEOUT_SECONDS, "language": Language.SH}
    if base is not None:
        initial = {
            "name": base.name,
            "language": base.language,
            "content": base.content,
            "timeout_seconds": base.timeout_seconds,
            "privileged": base.privileged,
            "requires_approval": base.requires_approval,
        }
    form = ScriptForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                script = services.create_script(request.user, **form.cleaned_data)
            except Forbidden as exc:
                raise PermissionDenied(exc.detail) from None
            except ServiceError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.detail)
                status = exc.status_code  # 400, or 409 when another version took the number
            else:
                messages.success(request, f"{script.name} v{script.version} written; it waits for approval.")
                return redirect("scripting:version", script_id=script.pk)
    return render(request, "scripting/editor.html", {"nav": "scripts", "form": form, "base": base}, status=status)
