"""Training: the run's specification and the job that trains (heavy imports only inside the job)."""
