"""Relays: mail the bridge sends (bounces, v2 replies) through a smarthost."""
