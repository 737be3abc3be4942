"""What domain apps add to the console's asset page, registered from their ``AppConfig.ready`` (the
console names no domain app): a panel (a heading, a template and what it shows of the asset) and
an action (a link that starts something on the asset)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AssetPanel:
    title: str
    template: str  # rendered with ``asset`` and ``panel`` (what ``load`` returned)
    load: Callable[[Any, Any], Any]  # (asset, user) -> the panel's data: a constant number of queries


@dataclass(frozen=True)
class AssetAction:
    label: str
    url: Callable[[Any], str]  # asset -> where the action starts


_PANELS: dict[str, AssetPanel] = {}
_ACTIONS: dict[str, AssetAction] = {}


def register_asset_panel(panel: AssetPanel) -> None:
    _PANELS[panel.title] = panel


def register_asset_action(action: AssetAction) -> None:
    _ACTIONS[action.label] = action


def asset_panels() -> list[AssetPanel]:
    return list(_PANELS.values())


def asset_actions() -> list[AssetAction]:
    return list(_ACTIONS.values())
