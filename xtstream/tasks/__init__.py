"""Tasks: what a region is labelled with, how a head is trained on it and decoded.

:class:`Task` is the interface, :func:`get_task` / :func:`task_for_head` find one by name; the
built-ins are ``xview3`` (:mod:`xtstream.tasks.xview3`) and ``classification``
(:mod:`xtstream.tasks.classification`). Nothing here imports torch.
"""

from xtstream.tasks.base import TASKS, Task, get_task, list_tasks, register_task, task_for_head

__all__ = ["TASKS", "Task", "get_task", "list_tasks", "register_task", "task_for_head"]
