"""Middleware every part of the project shares."""

from __future__ import annotations

from pathlib import Path

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from whitenoise.middleware import WhiteNoiseMiddleware


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise that keeps requests for anything but a static file on the event loop.

    WhiteNoise is sync-only, so under ASGI Django ran it, and so every request, in a thread of
    its own, then hopped back to the event loop for the rest of the middleware and into yet
    another thread for a sync view (docs/performance.md). Here only a static file is served
    through a thread.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        # STATIC_ROOT is empty until collectstatic fills it (the app files are served through the
        # finders meanwhile); made here, where it is served, not when the settings are imported.
        if settings.STATIC_ROOT:
            Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
