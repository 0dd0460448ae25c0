"""Delivering webhooks: the dispatcher that empties the outbox (delivery), the guard that keeps outbound
requests off the operator's network (outbound), and message signing (signing)."""
