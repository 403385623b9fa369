"""
Checks of our own for the schemathesis runs in tests/test_admin_live.py,
loaded with SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis import Case, CheckContext, Response


@schemathesis.check
def refused_without_the_token(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    """
    Run without the admin token (or with a wrong one): every answer must be
    the 401 that names the Bearer scheme, whatever was sent.
    """
    if response.status_code != 401:
        raise AssertionError(f"answered {response.status_code} without the admin token")
    headers = {name.lower(): values for name, values in response.headers.items()}
    challenge = headers.get("www-authenticate") or [""]
    if not challenge[0].startswith("Bearer "):
        raise AssertionError(f"401 without a Bearer challenge: {challenge!r}")
