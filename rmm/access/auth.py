from rest_framework import authentication, exceptions

from rmm.access.services import TokenRefused, authenticate_token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer rmm_…`` for people and service accounts."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header.startswith(self.keyword + " "):
            return None
        try:
            return authenticate_token(header[len(self.keyword) + 1 :].strip())
        except TokenRefused as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None

    def authenticate_header(self, request):
        return self.keyword
