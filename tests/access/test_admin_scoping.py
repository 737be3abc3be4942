"""Defect 7 of issue 11: a user granted one site sees no other site anywhere in the admin or the
console: not in a list, a list filter, an autocomplete, a choice list or a form."""

import re

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db.models import ForeignKey
from django.test import Client
from django.urls import reverse

from containment import services as containment
from evidence import services as evidence
from rmm.access import services as access_services
from rmm.engine.services import kill_switches
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from rmm.outbox import services as outbox
from rmm.siem import services as siem
from scripting import services as scripting
from tests.helpers import approved_authority, approved_script, make_agent, otp_login
from tests.support.evidence import record_item

FOREIGN = "zz-foreign-site"


def _site_world(site, tech, boss, psa, edr, script, careful, hostname):
    """A site's jobs of each kind, evidence, hold and kill switch, and its integrations: a webhook
    with a delivery and a SIEM destination restricted to it. What was made is returned by name, its
    ids to look for."""
    agent, _ = make_agent(site, hostname)
    Agent.objects.filter(pk=agent.pk).update(capabilities="structured_result", protocol=2)  # can contain
    task = approved_authority(site, psa)
    scripting.create_script_job(tech, script_id=script.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    scripting.create_script_job(tech, script_id=careful.pk, asset_id=agent.asset_id, psa_task_id=task.pk)
    record_item(agent.asset, task)
    evidence.place_hold(boss, site_ref=site.name, reason=f"hold {site.name}")
    contained, _ = containment.request(
        edr, asset_id=agent.asset_id, action="isolate", reason=f"isolate {hostname}", psa_task_id=task.pk
    )
    kill_switches.engage(tech, scope="asset", target=str(agent.asset_id), reason=f"stop {hostname}")
    webhook, _ = outbox.create_webhook(
        boss, url="http://127.0.0.1:9/hook", event_types=["*"], sites=[site.name], name=f"{site.name}-hook"
    )
    delivery = outbox.ping(boss, webhook)
    destination = siem.create_destination(
        boss, kind="syslog", address="127.0.0.1:9", sites=[site.name], name=f"{site.name}-siem"
    )
    return {
        "agent": agent,
        "ids": {str(contained.pk), str(webhook.pk), str(delivery.pk), delivery.event.message_id, str(destination.pk)},
        "webhook": webhook,
    }


@pytest.fixture
def scoped(db, caller, settings):
    settings.RMM_WEBHOOK_ALLOW_PRIVATE = True
    settings.RMM_PSA_WEBHOOK_URL = ""
    settings.RMM_CONTAINMENT_SERVER = ["192.0.2.10:8443"]
    mine = inventory.get_or_create_site("home-site")
    foreign = inventory.get_or_create_site(FOREIGN)
    tech, boss, psa = caller("tech", "technician"), caller("boss", "admin"), caller("psa", "psa")
    edr = caller("edr", "edr")
    script = approved_script(tech.user, boss.user, name="hello")
    careful = approved_script(tech.user, boss.user, name="careful", requires_approval=True)
    people = (tech.user, boss.user, psa.user, edr.user, script, careful)
    home = _site_world(mine, *people, "home-host")
    elsewhere = _site_world(foreign, *people, "zz-foreign-host")
    foreign_agent = elsewhere["agent"]
    # A staff user of one site, with every capability there and Django's view permission on every model.
    user = access_services.ensure_user_with_role("one-site", "admin")
    access_services.grant_site(user, mine)
    user.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    client = otp_login(Client(), user)
    forbidden = {FOREIGN, str(foreign.pk), foreign.pk.hex, "zz-foreign-host", str(foreign_agent.asset_id)}
    forbidden |= elsewhere["ids"]
    return {"client": client, "forbidden": forbidden, "user": user, "foreign": foreign, "webhook": home["webhook"]}


def _leaks(html: str, forbidden: set[str]) -> set[str]:
    return {word for word in forbidden if word in html}


def _admin_pages(client) -> list[str]:
    """Every registered changelist with each of its list filters opened, its add form, and the
    change form of every object it lists."""
    pages = ["/admin/", "/admin/approvals/"]
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        pages.append(changelist)
        pages.append(f"{changelist}?_facets=1")
        pages.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
        body = client.get(changelist).content.decode()
        prefix = re.escape(changelist)
        for found in set(re.findall(rf'href="({prefix}[0-9a-f-]+/change/)', body)):
            pages.append(found)
        for found in set(re.findall(r'href="(\?[^"]+)"', body)):
            pages.append(changelist + found.replace("&amp;", "&"))
    return pages


def _autocompletes() -> list[str]:
    """The admin's autocomplete endpoint, asked for every foreign key of every registered model."""
    urls = []
    for model in admin.site._registry:
        for field in model._meta.get_fields():
            if isinstance(field, ForeignKey) and field.remote_field.model in admin.site._registry:
                urls.append(
                    f"/admin/autocomplete/?app_label={model._meta.app_label}"
                    f"&model_name={model._meta.model_name}&field_name={field.name}&term="
                )
    return urls


def test_a_one_site_staff_user_sees_no_other_site_in_the_admin(scoped):
    client, forbidden = scoped["client"], scoped["forbidden"]
    leaks = {}
    for path in _admin_pages(client) + _autocompletes():
        response = client.get(path)
        assert response.status_code < 500, path
        found = _leaks(response.content.decode(), forbidden)
        if found:
            leaks[path] = found
    assert sorted({path.split("?")[0] for path in leaks}) == [], leaks


def test_a_one_site_user_sees_no_other_site_in_the_console(scoped):
    client, forbidden = scoped["client"], scoped["forbidden"]
    leaks = {}
    pages = ["/console/", "/console/scripts/run/", "/console/kill-switches/", "/console/evidence/exports/"]
    pages += ["/console/webhooks/", f"/console/webhooks/{scoped['webhook'].pk}/", "/console/siem/"]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        found = _leaks(response.content.decode(), forbidden)
        if found:
            leaks[path] = found
    assert leaks == {}


def test_the_site_filter_offers_the_callers_sites_and_filters(scoped):
    """With two sites of its own, the filter lists both (and no other) and still filters."""
    second = inventory.get_or_create_site("second-site")
    access_services.grant_site(scoped["user"], second)
    body = scoped["client"].get("/admin/scripting/scriptjob/").content.decode()
    links = dict(re.findall(r'href="\?site__id__exact=([0-9a-f-]+)"[^>]*>([^<]+)<', body))
    assert sorted(links.values()) == ["home-site", "second-site"]
    home = next(pk for pk, name in links.items() if name == "home-site")
    filtered = scoped["client"].get(f"/admin/scripting/scriptjob/?site__id__exact={home}").content.decode()
    assert "home-host" in filtered and _leaks(filtered, scoped["forbidden"]) == set()
