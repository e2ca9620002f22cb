"""The recorder's control API: JWT-authorized live control, health, readiness, metrics."""

from bot.control.auth import ROLE_POLICY, Action, AuthError, Authorizer, Caller
from bot.control.server import ControlServer

__all__ = ["ROLE_POLICY", "Action", "AuthError", "Authorizer", "Caller", "ControlServer"]
