"""Placeholder (being written)."""


def apply_optimizer_resume_fix() -> None:
    pass
