from django.apps import AppConfig


class AuthorityConfig(AppConfig):
    name = "rmm.authority"
    label = "authority"
