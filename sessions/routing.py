"""The relay's websockets: the agent's (authenticated by its credential, no browser origin) and
the browsers' (a signed-in user, same-origin, with a join token)."""

from django.urls import path

from sessions.consumers import AgentRelayConsumer, BrowserRelayConsumer

AGENT_WEBSOCKETS = "/ws/agent/"  # every path under it is an agent's (rmm/asgi.py)
agent_websocket_urlpatterns = [path("ws/agent/sessions/<uuid:session_id>/", AgentRelayConsumer.as_asgi())]
browser_websocket_urlpatterns = [path("ws/sessions/<uuid:session_id>/", BrowserRelayConsumer.as_asgi())]
