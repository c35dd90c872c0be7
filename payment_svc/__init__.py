"""The payment service: authorizations, refunds and deterministic decline rules."""
