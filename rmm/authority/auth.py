from rest_framework import authentication, exceptions

from rmm.authority.services import authenticate_token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer rmm_…`` for people and service accounts."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header.startswith(self.keyword + " "):
            return None
        found = authenticate_token(header[len(self.keyword) + 1 :].strip())
        if found is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        return found

    def authenticate_header(self, request):
        return self.keyword
