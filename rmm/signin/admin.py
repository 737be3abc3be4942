"""The admin is read-only: django-otp's device admin (which can add devices and show their secrets) is
taken away. A lost device is removed on the command line (``manage.py rmm_otp_reset``)."""

from django.contrib import admin
from django_otp.plugins.otp_totp.models import TOTPDevice

if admin.site.is_registered(TOTPDevice):
    admin.site.unregister(TOTPDevice)
