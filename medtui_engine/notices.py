"""Sentences shown to users in more than one place, written once (the CLI and the TUI both import them)."""

DISCLAIMER = "Model answers are for clinicians to assess; they are not medical advice."
