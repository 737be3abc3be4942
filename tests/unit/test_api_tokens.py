"""API tokens: who may be given one, for which sites, for how long; and what a token leaves behind."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from rmm import access
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory


def _token(*args, **kwargs) -> str:
    out = io.StringIO()
    call_command("rmm_token", *args, stdout=out, **kwargs)
    return out.getvalue().strip()


# --- rmm_token asks for the sites it grants ---------------------------------------------------


def test_rmm_token_without_a_site_or_all_sites_refuses_and_grants_nothing(db):
    inventory.get_or_create_site("alpha")
    with pytest.raises(CommandError, match="--site NAME or --all-sites"):
        _token("carol", role="technician")
    assert not get_user_model().objects.filter(username="carol").exists()
    assert not HistoryEvent.objects.filter(action__in=["access.site_granted", "api_token.issued"]).exists()


def test_rmm_token_from_the_shell_exits_non_zero_without_a_site(db, capsys):
    with pytest.raises(SystemExit) as exit_:
        call_command_from_argv(["manage.py", "rmm_token", "carol", "--role", "psa"])
    assert exit_.value.code != 0
    assert "--site NAME or --all-sites" in capsys.readouterr().err


def call_command_from_argv(argv):
    from django.core.management import ManagementUtility

    ManagementUtility(argv).execute()


def test_rmm_token_with_a_site_grants_that_site_only(db):
    alpha = inventory.get_or_create_site("alpha")
    inventory.get_or_create_site("beta")
    assert _token("carol", role="technician", site=["alpha"]).startswith("rmm_")
    user = get_user_model().objects.get(username="carol")
    assert list(access.visible_sites(user)) == [alpha]
    assert not access.sees_all_sites(user)


def test_rmm_token_with_all_sites_grants_every_site(db):
    inventory.get_or_create_site("alpha")
    assert _token("carol", role="technician", all_sites=True).startswith("rmm_")
    assert access.sees_all_sites(get_user_model().objects.get(username="carol"))


def test_rmm_token_refuses_a_site_and_all_sites_together(db):
    inventory.get_or_create_site("alpha")
    with pytest.raises(CommandError, match="not both"):
        _token("carol", role="technician", site=["alpha"], all_sites=True)
    assert not get_user_model().objects.filter(username="carol").exists()
