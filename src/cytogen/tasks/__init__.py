"""Lightning tasks."""

from cytogen.tasks.translate import TranslateTask

__all__ = ["TranslateTask"]
