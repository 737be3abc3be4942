"""A console form handed to a service: the one way a page turns a service's refusal into the
form's error beside its field and the page's status."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django import forms
from django.core.exceptions import PermissionDenied

from rmm.core.errors import Forbidden, ServiceError

T = TypeVar("T")


def submit(form: forms.Form, call: Callable[[dict], T]) -> tuple[T | None, int]:
    """``call(form.cleaned_data)`` for a form that validates: (its result, 200). Otherwise (None,
    400), or (None, the refusal's status) with the refusal beside its field; a Forbidden is the
    403 page."""
    if not form.is_valid():
        return None, 400
    try:
        return call(form.cleaned_data), 200
    except Forbidden as exc:
        raise PermissionDenied(exc.detail) from None
    except ServiceError as exc:
        form.add_error(exc.field if exc.field in form.fields else None, exc.detail)
        return None, exc.status_code
