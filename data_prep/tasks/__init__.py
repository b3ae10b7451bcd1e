"""The task registry: a task (HR, tickets, rubric, ...) is one module that owns everything task-specific.

A task module defines a `Task` subclass and registers one instance of it with `register`. The instance owns:

- ``name``: what ``data_prep.task`` and every example's ``task`` field say;
- ``fields`` / ``required``: the source fields ``data_prep.columns`` may / must map (checked by
  ``data_prep.config.validate``), plus `Task.check` for any other rule of its source mapping;
- ``options``: the other source options (``data_prep.<option>``) its reader reads; any option outside them and
  ``data_prep.config.COMMON_OPTIONS`` that a mapping sets is refused by name (``data_prep.config.validate``), so
  an option meant for another task never silently does nothing;
- ``source``: the reader module (``build``, ``answers``, ``system_prompt``, ``input_paths``) that
  ``data_prep.prepare`` runs, e.g. ``data_prep.hr``;
- `Task.check_split`: a check of the split examples before the answers are written (default: none);
- its answer format: `Task.normalise`, `Task.parse_prose`, `Task.render_prose` (and `Task.render_json`),
  reached through ``data_prep.answers``;
- its metric groups (`Task.groups`, built from ``data_prep.metrics``), which ``recipes.evaluate`` scores and
  plots;
- its classical baselines (``baselines`` names, `Task.baseline_answers`), which ``recipes.baselines`` fits.

Generic code looks tasks up here and never branches on a task name. The shipped tasks
(`SHIPPED`) are loaded on first use; any other module is loaded with the ``task_modules`` setting that
``conf/data_prep.yaml``, ``conf/evaluate.yaml`` and ``conf/baselines.yaml`` share (default ``[]``).

Adding a task = one new module + one YAML: a module on ``PYTHONPATH`` that calls ``register(MyTask())``,
and a source mapping ``conf/data_prep/<source>.yaml`` with ``task: <its name>``; then every workflow takes
``task_modules=[<module>]``.

Examples:
    python -m data_prep data_prep=toy input=toy.csv task_modules=[my_tasks.toy]
    python -c "from data_prep import tasks; print(tasks.names())"
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from types import ModuleType

SHIPPED = (
    "data_prep.tasks.hr",
    "data_prep.tasks.tickets",
    "data_prep.tasks.rubric",
    "data_prep.tasks.builtin",
)
SETTING = "task_modules"  # the config key, in every workflow, that lists plugin modules to import

_REGISTRY: dict[str, Task] = {}
_shipped_loaded = False


class UnknownTaskError(ValueError):
    """A task name that no loaded module registered; the message lists the known ones and the fix."""


class TaskModuleError(ValueError):
    """A ``task_modules`` entry that cannot be imported."""


class BaselinesError(ValueError):
    """A baseline run that cannot start or fit; the message lists every problem and its fix."""


class Task:
    """What a task module subclasses; every method below has a default except the answer format.

    Attributes:
        name: The task name (``data_prep.task``, ``ChatExample.task``).
        fields: Source fields ``data_prep.columns`` may map.
        required: Fields it must map.
        options: Source options its reader reads besides ``data_prep.config.COMMON_OPTIONS``; any other one set
            away from its default is refused by name.
        source: Reader module with ``build(cfg)``, ``answers(ex, cfg)``, ``system_prompt(ex, cfg)`` and
            ``input_paths(cfg)``; None when ``python -m data_prep`` cannot build this task.
        baselines: Names of the classical baselines ``recipes.baselines`` can fit for this task.
    """

    name: str = ""
    fields: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    source: ModuleType | None = None
    baselines: tuple[str, ...] = ()

    def check(self, src) -> list[str]:
        """Problems of a source mapping (``cfg.data_prep``) beyond its fields, each naming its fix."""
        return []

    def check_split(self, ex, cfg) -> None:
        """Refuse a split dataset (`data_prep.dataset.ExampleFrame` with its ``split``) that cannot be written.

        Called by ``data_prep.prepare`` once the split is known and before the answers are written, e.g. to
        refuse a prompt column that states the label (the HR task's leak guard). Raises
        ``data_prep.config.ConfigError`` naming the setting that fixes it; the default accepts everything.
        """
        return None

    def normalise(self, answer: dict) -> dict:
        """The answer dict with canonical types, rounding and key order; raises ``AnswerParseError``."""
        raise NotImplementedError

    def parse_prose(self, text: str) -> dict:
        """The fields of a prose answer (before `normalise`); raises ``AnswerParseError``."""
        raise NotImplementedError

    def render_prose(self, answer: dict) -> str:
        """A normalised answer in the prose format."""
        raise NotImplementedError

    def render_json(self, answer: dict) -> str:
        """A normalised answer in the JSON format."""
        return json.dumps(answer, ensure_ascii=False)

    def groups(self, scored: list, cfg) -> list:
        """The ``data_prep.metrics.Group`` of each labelled answer field, from ``(example, answer)`` pairs."""
        return []

    def baseline_models(self, cfg) -> list[str]:
        """The baselines a ``recipes.baselines`` config selects for this task."""
        return list(self.baselines)

    def check_baselines(self, cfg) -> list[str]:
        """Problems of the baselines config's options for this task, each naming its fix."""
        return []

    def baseline_answers(self, model: str, train: list, test: list, cfg) -> list[dict]:
        """Fit ``model`` on ``train`` and answer each example of ``test`` (answer dicts, in order)."""
        raise NotImplementedError


def register(task: Task) -> Task:
    """Make ``task`` known by its name; registering a name twice keeps the later one.

    Examples:
        python -c "from data_prep import tasks; print(tasks.register(tasks.get('hr')).name)"
    """
    if not task.name:
        raise ValueError(f"{type(task).__name__} has no name; set the class attribute name = '<task>'")
    _REGISTRY[task.name] = task
    return task


def load(modules: Iterable[str] = ()) -> None:
    """Import the shipped task modules and ``modules`` (each registers its tasks when imported).

    Raises:
        TaskModuleError: A module cannot be imported; the message names it and the setting.

    Examples:
        python -c "from data_prep import tasks; tasks.load(['data_prep.tasks.hr']); print(tasks.names())"
    """
    global _shipped_loaded
    _shipped_loaded = True
    for name in (*SHIPPED, *modules):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise TaskModuleError(
                f"{SETTING}: cannot import {name!r} ({e}); put its folder on PYTHONPATH or fix {SETTING}=[...]"
            ) from e


def get(name: str) -> Task:
    """The registered task called ``name``.

    Raises:
        UnknownTaskError: No loaded module registered it; the message lists the known tasks and the setting
            that loads a plugin module.

    Examples:
        python -c "from data_prep import tasks; print(tasks.get('tickets').fields)"
    """
    if not _shipped_loaded:
        load()
    if name not in _REGISTRY:
        raise UnknownTaskError(
            f"unknown task {name!r}; known tasks: {', '.join(names())}; a task from another module is loaded "
            f"with {SETTING}=[<module>]"
        )
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered task names, sorted.

    Examples:
        python -c "from data_prep import tasks; print(tasks.names())"
    """
    if not _shipped_loaded:
        load()
    return tuple(sorted(_REGISTRY))
