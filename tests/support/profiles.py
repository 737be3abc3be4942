"""Config keys made as a user would: scripts and the definition written by one person through the
services and approved by another (tests/profiles, the authorization matrix's world)."""

from __future__ import annotations

from django.contrib.auth.models import Permission

from profiles import services as profiles
from profiles.models import ConfigKey
from rmm.artefacts import services as artefacts
from tests.helpers import approved_script

LINE_READ = 'awk -v k="$RMM_PARAM_KEY" \'$1 == k { print $2; f = 1 } END { exit f ? 0 : 3 }\' "$RMM_PARAM_PATH"\n'
LINE_SET = 'echo "$RMM_PARAM_KEY $RMM_DESIRED_VALUE" >> "$RMM_PARAM_PATH"\n'


def approved_key(
    author,
    approver,
    *,
    name: str = "test.line",
    value_type: str = "string",
    comparisons: tuple[str, ...] = ("equals", "not_equals", "regex", "contains", "absent"),
    settable: bool = True,
    approve: bool = True,
) -> ConfigKey:
    """A key with parameters ``path`` and ``key``, its scripts approved, and itself approved
    unless ``approve`` is false."""
    read = approved_script(author, approver, name=f"{name}.read", content=LINE_READ)
    write = approved_script(author, approver, name=f"{name}.set", content=LINE_SET) if settable else None
    key = profiles.create_config_key(
        author,
        name=name,
        platform="linux",
        value_type=value_type,
        comparisons=list(comparisons),
        parameters=[{"name": "path", "description": "the file"}, {"name": "key", "description": "the line's key"}],
        read_script=read,
        set_script=write,
    )
    return artefacts.decide(key, approver, approve=True) if approve else key


def grant_privileged_approval(user) -> None:
    """The permission that approving a privileged script (the built-in keys' set scripts) needs."""
    user.user_permissions.add(Permission.objects.get(codename="approve_privileged"))
    for cached in ("_perm_cache", "_user_perm_cache"):
        user.__dict__.pop(cached, None)
