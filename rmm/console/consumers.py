"""Live job events for the console: a user joins only the groups of the sites it may see."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth import get_user_model

from rmm.access import roles as access
from rmm.engine.events import ALL_GROUP, site_group, user_group
from rmm.signin.policy import needs_second_factor, session_verified


@database_sync_to_async
def _site_groups(user) -> list[str]:
    sites = [site_group(pk) for pk in access.visible_sites(user).values_list("pk", flat=True)]
    return [ALL_GROUP, user_group(user.pk), *sites]  # the user's own group: progress of its exports


@database_sync_to_async
def _fresh_user(user_id):
    """The user as the database has it now (no permission cache of the connection's start)."""
    return get_user_model().objects.filter(pk=user_id, is_active=True).first()


@database_sync_to_async
def _lacks_second_factor(user, session) -> bool:
    return needs_second_factor(user) and not session_verified(user, session)


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        if await _lacks_second_factor(user, self.scope.get("session")):
            await self.close(code=4403)  # the same rule as the pages: admins and approvers need a second factor
            return
        self.groups_joined = await _site_groups(user)
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def rmm_access(self, message):
        """The user's roles or grants changed: leave the groups of sites no longer visible, join
        new ones, and tell the page. A user deactivated or deleted is disconnected."""
        user = await _fresh_user(self.scope["user"].pk)
        if user is None:
            await self.close(code=4403)
            return
        wanted = await _site_groups(user)
        for group in set(self.groups_joined) - set(wanted):
            await self.channel_layer.group_discard(group, self.channel_name)
        for group in set(wanted) - set(self.groups_joined):
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = wanted
        await self.send_json({"type": "access_changed"})

    async def rmm_event(self, message):
        await self.send_json(message["event"])
