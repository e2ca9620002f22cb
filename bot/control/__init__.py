"""The recorder's control API: JWT-authorized live control, health, readiness, metrics.

The HTTP server (``bot.control.server``, aiohttp) is imported where it is started, so a
recorder without the control API never loads it.
"""

from bot.control.auth import ROLE_POLICY, Action, AuthError, Authorizer, Caller

__all__ = ["ROLE_POLICY", "Action", "AuthError", "Authorizer", "Caller"]
