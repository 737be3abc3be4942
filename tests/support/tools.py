"""Tools from Debian packages that some tests need."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def require(executable: str, package: str) -> None:
    """A missing tool fails in CI (which installs it) and skips elsewhere."""
    if shutil.which(executable) is None and not Path(executable).exists():
        reason = f"{executable} is not installed (apt-get install {package}; `make install` does so as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
