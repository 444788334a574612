"""Evaluating a tuned model against its base on cases with reference diagnoses.

``cases`` reads case files (flat cases, CMB-Clin-shaped clinical records, multiple-choice exams);
``runner`` has each model answer them and saves the answers (``answers``: JSONL); ``scoring`` and
``matching`` score each answer from its text alone (no judge model); ``report`` aggregates the scores
(rates with 95% intervals, means) and pairs base with tuned (``stats``: McNemar's exact test, paired
bootstrap); every method is stated in the Markdown report.
"""
