import uuid

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """A bearer token for a person or service account; only its hash is stored.

    ``privileged``: its user could approve or administer when it was issued, which only the
    server's command or a console session past its second factor may do; such a token always
    expires. ``last_used_at`` is kept to the minute (written at most once a minute per token).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    token_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    privileged = models.BooleanField(default=False)
    issued_by = models.CharField(max_length=200, blank=True)
    revoked_by = models.CharField(max_length=200, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"
        db_table = "authority_apitoken"  # kept from the authority app, where tokens began

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"
