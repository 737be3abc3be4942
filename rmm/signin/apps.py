from django.apps import AppConfig


class SigninConfig(AppConfig):
    name = "rmm.signin"
    label = "signin"
    verbose_name = "Sign-in"

    def ready(self):
        from axes.signals import user_locked_out

        from rmm.signin import services

        user_locked_out.connect(services.record_lockout, dispatch_uid="rmm.signin.record_lockout")
