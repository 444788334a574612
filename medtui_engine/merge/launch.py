"""Start a merge job: write its spec, launch it detached. Used by ``medtui merge`` and the TUI."""

from __future__ import annotations

from pathlib import Path

from ..runs.jobs import launch_job
from .events import JOB_MODULE
from .job import new_job_dir, write_job_spec


def start_merge(plan, workspace: Path, options: dict | None = None) -> Path:
    """Write the job's spec and launch the detached job; returns the job directory (follow it with
    ``JobFollower(job_dir, "merge")``)."""
    job_dir = new_job_dir(workspace)
    write_job_spec(job_dir, plan, options)
    launch_job(JOB_MODULE, job_dir)
    return job_dir
