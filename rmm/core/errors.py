"""Service-layer refusals. Views map them to HTTP; admin actions to messages."""


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str, field: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field

    def as_dict(self) -> dict:
        if self.field:
            return {self.field: [self.detail]}
        return {"detail": self.detail}


class InvalidInput(ServiceError):
    """400: the input names something missing, unknown or not usable."""


class Forbidden(ServiceError):
    """403: the caller may not do this (role, four eyes, kill switch)."""

    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    """409: the current state does not allow this transition."""

    status_code = 409
