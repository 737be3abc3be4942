"""Config key definitions (an artefact kind) and configuration profiles: the only writers of this
app's tables. A profile's items are never rewritten: a change makes a new revision."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from django.db import IntegrityError, transaction
from django.db.models import Max

from profiles.models import (
    Comparison,
    ConfigKey,
    ConfigurationItem,
    ConfigurationProfile,
    ConfigurationProfileRevision,
    EnforcementMode,
    Platform,
    ValueType,
)
from rmm.artefacts import services as artefacts
from rmm.artefacts.states import ApprovalStatus
from rmm.core.errors import InvalidInput
from rmm.core.text import unstorable
from rmm.engine import services as engine
from rmm.history import services as history
from scripting import services as scripting
from scripting.models import Script

# Who may author profiles and key definitions: whoever may author scripts (they are scripts' intent).
CAPABILITY = "author_scripts"
# The comparisons that make sense for each value type; a key allows a subset of its type's.
COMPARISONS_BY_TYPE: dict[str, tuple[str, ...]] = {
    ValueType.STRING: ("equals", "not_equals", "regex", "contains", "absent"),
    ValueType.INTEGER: ("equals", "not_equals", "at_least", "at_most", "absent"),
    ValueType.BOOLEAN: ("equals", "not_equals", "absent"),
}
PARAMETER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_ITEMS = 500
MAX_VALUE_CHARS = 4096
BUILTIN_KEYS = Path(__file__).resolve().parent / "keys"


# --- key definitions ----------------------------------------------------------------------------


def _script_ref(script: Script | None) -> dict | None:
    if script is None:
        return None
    return {"name": script.name, "version": script.version, "sha256": script.sha256}


def definition_of(
    *,
    name: str,
    description: str,
    platform: str,
    value_type: str,
    comparisons: list[str],
    parameters: list[dict],
    read_script: Script,
    set_script: Script | None,
) -> dict:
    """What a key version is, with both scripts by name, version and sha256: the document its
    ``content_sha256`` covers, so approving it approves exactly those scripts' content."""
    return {
        "name": name,
        "description": description,
        "platform": platform,
        "value_type": value_type,
        "comparisons": list(comparisons),
        "parameters": [dict(p) for p in parameters],
        "read_script": _script_ref(read_script),
        "set_script": _script_ref(set_script),
    }


def _canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _definition(key: ConfigKey) -> dict:
    return definition_of(
        name=key.name,
        description=key.description,
        platform=key.platform,
        value_type=key.value_type,
        comparisons=key.comparisons,
        parameters=key.parameters,
        read_script=key.read_script,
        set_script=key.set_script,
    )


def key_content(key: ConfigKey) -> str:
    """What an approver reads: the definition, then both scripts' text (a diff shows any change)."""
    parts = [json.dumps(_definition(key), indent=2, sort_keys=True)]
    for label, script in (("read script", key.read_script), ("set script", key.set_script)):
        if script is not None:
            parts.append(f"--- {label} {script} (sha256 {script.sha256}) ---\n{script.content}")
    return "\n".join(parts) + "\n"


def _clean_parameters(parameters) -> list[dict]:
    if not isinstance(parameters, list):
        raise InvalidInput("A list of {name, description, required}.", field="parameters")
    cleaned, seen = [], set()
    for index, spec in enumerate(parameters):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidInput("Each parameter needs a name.", field=f"parameters[{index}]")
        if not PARAMETER_NAME.match(spec["name"]) or spec["name"] in seen:
            raise InvalidInput(
                "Lowercase letters, digits and _, starting with a letter, each name once.",
                field=f"parameters[{index}].name",
            )
        seen.add(spec["name"])
        cleaned.append(
            {
                "name": spec["name"],
                "description": str(spec.get("description") or ""),
                "required": bool(spec.get("required", True)),
            }
        )
    return cleaned


def create_config_key(
    user,
    *,
    name: str,
    platform: str,
    value_type: str,
    comparisons: list[str],
    parameters: list[dict],
    read_script: Script,
    set_script: Script | None = None,
    description: str = "",
) -> ConfigKey:
    """The next version of key ``name``, pending until a second person approves it (an artefact)."""
    engine.require_role(user, CAPABILITY, "config_key.create")
    name = (name or "").strip()
    if not name or unstorable(name):
        raise InvalidInput("This field is required.", field="name")
    if platform not in Platform.values:
        raise InvalidInput(f"Must be one of: {', '.join(Platform.values)}.", field="platform")
    if value_type not in ValueType.values:
        raise InvalidInput(f"Must be one of: {', '.join(ValueType.values)}.", field="value_type")
    allowed = COMPARISONS_BY_TYPE[value_type]
    if not comparisons or not isinstance(comparisons, list) or any(c not in allowed for c in comparisons):
        raise InvalidInput(f"A {value_type} key allows some of: {', '.join(allowed)}.", field="comparisons")
    parameters = _clean_parameters(parameters)
    document = definition_of(
        name=name,
        description=description,
        platform=platform,
        value_type=value_type,
        comparisons=comparisons,
        parameters=parameters,
        read_script=read_script,
        set_script=set_script,
    )
    digest = hashlib.sha256(_canonical(document)).hexdigest()

    def write(version: int) -> ConfigKey:
        key = ConfigKey.objects.create(
            name=name,
            version=version,
            description=description,
            platform=platform,
            value_type=value_type,
            comparisons=list(comparisons),
            parameters=parameters,
            read_script=read_script,
            set_script=set_script,
            content_sha256=digest,
            author=user,
        )
        history.append(
            user, "config_key.created", key, payload={"name": name, "version": version, "content_sha256": digest}
        )
        return key

    return artefacts.create_version(ConfigKey, name, write, label="config key")


def _approved(script: Script | None) -> bool:
    return script is None or script.approval_status == ApprovalStatus.APPROVED


def usable_key(name: str) -> ConfigKey | None:
    """The newest approved version of key ``name`` whose scripts are approved too, or None."""
    for key in ConfigKey.objects.filter(name=name, approval_status=ApprovalStatus.APPROVED).select_related(
        "read_script", "set_script"
    ):
        if _approved(key.read_script) and _approved(key.set_script):
            return key
    return None


def _unusable_reason(name: str) -> str:
    statuses = set(ConfigKey.objects.filter(name=name).values_list("approval_status", flat=True))
    if not statuses:
        return f"No config key named {name!r}."
    if ApprovalStatus.APPROVED not in statuses:
        return f"Config key {name!r} has no approved version yet."
    return f"Config key {name!r}: no approved version whose read and set scripts are both approved."


def _script_version(name: str, language: str, content: str, privileged: bool, user) -> tuple[Script, bool]:
    """The newest version of script ``name`` when its content is ``content``, else a new version."""
    latest = Script.objects.filter(name=name).order_by("-version").first()
    digest = hashlib.sha256(content.encode()).hexdigest()
    if latest is not None and latest.sha256 == digest and latest.privileged == privileged:
        return latest, False
    return scripting.create_script(user, name=name, language=language, content=content, privileged=privileged), True


def load_builtin_keys(user, root: Path = BUILTIN_KEYS) -> dict[str, int]:
    """The shipped key definitions (``<root>/<platform>/<key>/key.json`` and its scripts) as script
    versions and key versions, pending approval, in one transaction. Idempotent: a file that did not
    change makes nothing new; a changed one makes new versions. How many of each it made."""
    engine.require_role(user, CAPABILITY, "config_key.create")
    made = {"scripts": 0, "keys": 0}
    with transaction.atomic():  # all of them or, on any error, none
        for spec_path in sorted(root.glob("*/*/key.json")):
            spec = json.loads(spec_path.read_text())
            scripts = {}
            for role in ("read", "set"):
                entry = spec.get(f"{role}_script")
                if entry is None:
                    scripts[role] = None
                    continue
                content = (spec_path.parent / entry["file"]).read_text()
                scripts[role], new = _script_version(
                    f"config_key.{spec['name']}.{role}", entry["language"], content, bool(entry.get("privileged")), user
                )
                made["scripts"] += new
            fields = {
                "name": spec["name"],
                "description": spec.get("description", ""),
                "platform": spec["platform"],
                "value_type": spec["value_type"],
                "comparisons": spec["comparisons"],
                "parameters": _clean_parameters(spec.get("parameters", [])),
                "read_script": scripts["read"],
                "set_script": scripts["set"],
            }
            digest = hashlib.sha256(_canonical(definition_of(**fields))).hexdigest()
            latest = ConfigKey.objects.filter(name=spec["name"]).order_by("-version").first()
            if latest is None or latest.content_sha256 != digest:
                create_config_key(user, **fields)
                made["keys"] += 1
    return made


# --- profiles -----------------------------------------------------------------------------------


def _is_integer(value: str) -> bool:
    return re.fullmatch(r"-?\d{1,18}", value) is not None


def _clean_item(index: int, item, keys: dict[str, ConfigKey | None]) -> dict:
    """One item checked against its key: each problem a 400 naming ``items[i].<field>``."""
    where = f"items[{index}]"
    if not isinstance(item, dict):
        raise InvalidInput("Each item is an object.", field=where)
    name = item.get("config_key")
    if not isinstance(name, str) or not name or unstorable(name):
        raise InvalidInput("A key's name is required.", field=f"{where}.config_key")
    if name not in keys:
        keys[name] = usable_key(name)
    key = keys[name]
    if key is None:
        raise InvalidInput(_unusable_reason(name), field=f"{where}.config_key")
    mode = item.get("enforcement_mode", EnforcementMode.AUDIT)
    if mode not in EnforcementMode.values:
        raise InvalidInput(f"Must be one of: {', '.join(EnforcementMode.values)}.", field=f"{where}.enforcement_mode")
    if mode == EnforcementMode.ENFORCE and key.set_script_id is None:
        raise InvalidInput(
            f"Config key {name!r} has no set script: it can be audited, not enforced.",
            field=f"{where}.enforcement_mode",
        )
    comparison = item.get("comparison")
    if comparison not in Comparison.values:
        raise InvalidInput(f"Must be one of: {', '.join(Comparison.values)}.", field=f"{where}.comparison")
    if comparison not in COMPARISONS_BY_TYPE[key.value_type]:
        needs = "an integer key" if comparison in ("at_least", "at_most") else "a string key"
        raise InvalidInput(
            f"{comparison} needs {needs}; {name!r} holds a {key.value_type}.", field=f"{where}.comparison"
        )
    if comparison not in key.comparisons:
        raise InvalidInput(f"Config key {name!r} allows: {', '.join(key.comparisons)}.", field=f"{where}.comparison")
    desired = item.get("desired_value", "")
    if not isinstance(desired, str) or unstorable(desired) or len(desired) > MAX_VALUE_CHARS:
        raise InvalidInput(f"A text of at most {MAX_VALUE_CHARS} characters.", field=f"{where}.desired_value")
    if comparison == Comparison.ABSENT and desired:
        raise InvalidInput("absent compares with nothing: leave it empty.", field=f"{where}.desired_value")
    if comparison != Comparison.ABSENT:
        if key.value_type == ValueType.INTEGER and not _is_integer(desired):
            raise InvalidInput(f"{name!r} holds an integer: give one.", field=f"{where}.desired_value")
        if key.value_type == ValueType.BOOLEAN and desired not in ("true", "false"):
            raise InvalidInput(f"{name!r} holds a boolean: true or false.", field=f"{where}.desired_value")
        if comparison == Comparison.REGEX:
            try:
                re.compile(desired)
            except re.error as exc:
                raise InvalidInput(f"Not a regular expression: {exc}.", field=f"{where}.desired_value") from exc
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("An object of parameter names and values.", field=f"{where}.parameters")
    named = {spec["name"]: spec for spec in key.parameters}
    unknown = sorted(set(parameters) - set(named))
    if unknown:
        raise InvalidInput(f"{name!r} takes no parameter {unknown[0]!r}.", field=f"{where}.parameters")
    missing = [p for p, spec in named.items() if spec["required"] and not parameters.get(p)]
    if missing:
        raise InvalidInput(f"{name!r} needs the parameter {missing[0]!r}.", field=f"{where}.parameters")
    for param, value in parameters.items():
        if not isinstance(value, str) or unstorable(value) or len(value) > MAX_VALUE_CHARS:
            raise InvalidInput(f"A text of at most {MAX_VALUE_CHARS} characters.", field=f"{where}.parameters.{param}")
    return {
        "config_key": key,
        "parameters": dict(parameters),
        "desired_value": desired,
        "comparison": comparison,
        "enforcement_mode": mode,
    }


def _clean_items(items) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise InvalidInput("A profile needs at least one item.", field="items")
    if len(items) > MAX_ITEMS:
        raise InvalidInput(f"At most {MAX_ITEMS} items.", field="items")
    keys: dict[str, ConfigKey | None] = {}
    return [_clean_item(index, item, keys) for index, item in enumerate(items)]


def _write_revision(
    user, profile: ConfigurationProfile, number: int, items: list[dict]
) -> ConfigurationProfileRevision:
    revision = ConfigurationProfileRevision.objects.create(profile=profile, revision=number, created_by=user)
    ConfigurationItem.objects.bulk_create(
        ConfigurationItem(revision=revision, position=position, **item) for position, item in enumerate(items)
    )
    profile.current_revision = revision
    profile.save(update_fields=["current_revision"])
    return revision


def _items_payload(items: list[dict]) -> list[dict]:
    return [
        {**item, "config_key": item["config_key"].name, "config_key_version": item["config_key"].version}
        for item in items
    ]


def create_profile(user, *, name: str, profile_type: str, description: str = "", items: list) -> ConfigurationProfile:
    """A profile and its first revision of items; nothing is written when any item is refused."""
    engine.require_role(user, CAPABILITY, "profile.create")
    name = (name or "").strip()
    if not name or unstorable(name):
        raise InvalidInput("This field is required.", field="name")
    profile_type = (profile_type or "").strip()
    if not profile_type or unstorable(profile_type):
        raise InvalidInput("This field is required.", field="profile_type")
    if unstorable(description or ""):
        raise InvalidInput("Contains a NUL or a lone surrogate.", field="description")
    cleaned = _clean_items(items)
    try:
        with transaction.atomic():
            profile = ConfigurationProfile.objects.create(
                name=name, profile_type=profile_type, description=description or "", created_by=user
            )
            _write_revision(user, profile, 1, cleaned)
            history.append(
                user,
                "profile.created",
                profile,
                payload={"name": name, "profile_type": profile_type, "revision": 1, "items": _items_payload(cleaned)},
            )
    except IntegrityError as exc:
        raise InvalidInput("A profile with this name exists.", field="name") from exc
    return profile


def revise_profile(user, profile: ConfigurationProfile, *, items: list) -> ConfigurationProfileRevision:
    """A new revision from a whole new item list; earlier revisions and their items stay as they were."""
    engine.require_role(user, CAPABILITY, "profile.revise", profile)
    cleaned = _clean_items(items)
    with transaction.atomic():
        # The profile's row lock orders two revisions made at once: each gets its own number.
        locked = ConfigurationProfile.objects.select_for_update().get(pk=profile.pk)
        number = (locked.revisions.aggregate(n=Max("revision"))["n"] or 0) + 1
        revision = _write_revision(user, locked, number, cleaned)
        history.append(user, "profile.revised", locked, payload={"revision": number, "items": _items_payload(cleaned)})
        # Its assignments await a second person again when the new revision enforces.
        from profiles import assignments  # it builds on this module

        assignments.on_revision(user, locked, revision)
    profile.current_revision = revision
    return revision
