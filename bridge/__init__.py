"""sms-bridge: a self-hosted email-to-SMS and inbound SMS relay."""

__version__ = "0.1.0"
