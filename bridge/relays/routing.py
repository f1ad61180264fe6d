"""Which targets an inbound message goes to, and which reply script answers a short code.
Pure functions over the routes and scripts configured; the inbound service and the relays
both decide with them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.models import InboundMessage
from bridge.settings import RouteSettings


def route_matches(route: RouteSettings, message: InboundMessage) -> bool:
    if route.to and (message.recipient or "") not in route.to:
        return False
    if route.keyword is not None and message.keyword != route.keyword.casefold():
        return False
    return not route.sender_prefixes or any(
        message.phone.startswith(prefix.lstrip("+")) for prefix in route.sender_prefixes
    )


def select_route(routes: Sequence[RouteSettings], message: InboundMessage) -> RouteSettings | None:
    """The first route that matches, in configuration order (put the catch-all last)."""
    return next((route for route in routes if route_matches(route, message)), None)


@dataclass(frozen=True)
class ReplyScript:
    """A registered reply script, from the configuration or the admin API."""

    id: str  # "config:N" or "api:N"
    shortcode: str
    keyword: str | None
    url: str
    method: str
    timeout: float
    secret: str | None


def select_script(
    scripts: Sequence[ReplyScript], shortcode: str, keyword: str
) -> ReplyScript | None:
    """A script registered for this short code and keyword wins over one for the short code
    alone; among equals, the first registered."""
    candidates = [s for s in scripts if s.shortcode == shortcode]
    specific = [s for s in candidates if s.keyword and s.keyword.casefold() == keyword]
    generic = [s for s in candidates if not s.keyword]
    matches = specific or generic
    return matches[0] if matches else None
