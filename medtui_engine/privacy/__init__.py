"""Patient data stays in: the identifier gate before training, redaction, the audit trail of a
run's data, and the offline proof. No heavy imports here."""
