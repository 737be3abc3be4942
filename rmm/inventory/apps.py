from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "rmm.inventory"
    label = "inventory"
