"""Sentence-pair tasks: spec.py (what each GLUE task is), sources.py (where a task's splits come from, and
the file readers), examples.py (a split as `PairExamples`), task.py (a task resolved from its config).

    from bert.tasks import load_task, GLUE_TASKS
"""

from bert.tasks.examples import PairExamples
from bert.tasks.sources import build_synthetic_pairs, read_synthetic, read_table, source_for
from bert.tasks.spec import GLUE_TASKS, TaskSpec
from bert.tasks.task import Task, load_task

__all__ = [
    "GLUE_TASKS",
    "PairExamples",
    "Task",
    "TaskSpec",
    "build_synthetic_pairs",
    "load_task",
    "read_synthetic",
    "read_table",
    "source_for",
]
