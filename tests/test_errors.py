"""How the exceptions read when printed: in a traceback the class name comes first, once."""

from __future__ import annotations

import traceback

from freelance_rz import JobFailed, JobTimeout

MESSAGE = "the job ran past its time limit of 1 s and was killed"


def last_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].rstrip("\n")


def test_job_timeout_names_its_class_once():
    exc = JobTimeout("JobTimeout", MESSAGE, "")
    assert str(exc) == MESSAGE
    assert last_line(exc) == f"freelance_rz.errors.JobTimeout: {MESSAGE}"
    assert exc.remote_type == "JobTimeout" and exc.remote_message == MESSAGE


def test_job_failed_still_names_the_remote_type_and_its_traceback():
    exc = JobFailed("ValueError", "bad input", "Traceback (most recent call last):\n  ...\n")
    assert last_line(exc).startswith("freelance_rz.errors.JobFailed: ValueError: bad input")
    assert str(exc).endswith("Remote traceback:\nTraceback (most recent call last):\n  ...")
