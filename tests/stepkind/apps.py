from django.apps import AppConfig


class StepKindConfig(AppConfig):
    """A test-only job kind of several steps (installed by tests/settings.py only): the worked
    example of a kind that the engine's contract test and the end-to-end test run."""

    name = "tests.stepkind"
    label = "stepkind"

    def ready(self) -> None:
        from evidence import types
        from tests.stepkind import kind  # registers the "step" job kind

        types.register(kind.STEP_RESULT, "What one step of a test-only multi-step job ran and what came out")
