"""Evaluating a tuned model against its base on cases with reference diagnoses.

Every measure is deterministic and defined in ``scoring`` (no judge model); the report states each
method, with n and 95% intervals for rates, in the seed's table shape: measures x (base, tuned, diff).
"""
