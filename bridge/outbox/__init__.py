"""The outbox: pure retry decisions, rate limits and the dispatcher loop."""
