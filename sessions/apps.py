from django.apps import AppConfig


class SessionsConfig(AppConfig):
    """Brokered, recorded remote sessions (seed F). Labelled ``remote_sessions``: the label
    ``sessions`` is django.contrib.sessions'."""

    name = "sessions"
    label = "remote_sessions"
    verbose_name = "Remote sessions"

    def ready(self):
        from evidence import types
        from rmm.artefacts import registry as artefacts
        from rmm.engine import services as engine
        from rmm.engine.services import kill_switches
        from rmm.outbox import services as outbox
        from sessions import artefact, kind, services  # kind registers the "remote_session" job kind
        from sessions.providers import meshcentral, terminal  # noqa: F401  (terminal registers the built-in provider)

        artefacts.register(artefact.SESSION_POLICY)
        meshcentral.configure()  # only when MeshCentral is configured
        types.register(kind.SESSION_STEP, "What an agent reported of serving a remote session")
        types.register(
            kind.SESSION_RECORDING,
            "A remote session's recording (asciicast v2 or its provider's), sealed by its sha256",
        )
        kill_switches.register_hook(services.end_in_scope)
        engine.register_withdrawal_hook(services.live_under, services.end_under)
        outbox.register(services.ENDED, "A remote session ended (by whom or what, and why)")
        outbox.register(services.RECORDED, "A remote session's recording was sealed as evidence (its sha256)")
