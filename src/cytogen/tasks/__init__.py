"""Lightning tasks: regression, conditional GAN and CycleGAN translation, and the Statistical
Cell's beta-VAEs (``statcell_reference``, ``statcell_target``; built by the cell workflow with
their own arguments, see :mod:`cytogen.tasks.vae`) and the unsupervised marker-patch cell
segmenter (``cellseg_consistency``, :mod:`cytogen.tasks.cellseg`) and the supervised nucleus
segmenter (``segment_nuclei``, :mod:`cytogen.tasks.segment`), built by name.

``TASKS`` holds every registered task; :func:`build_task` builds one with the uniform
arguments (see :mod:`cytogen.tasks.registry`). A new task is one module with a class decorated
``@register_task("name")``, imported here.
"""

from typing import Any

from cytogen.tasks.registry import TASKS, register_task
from cytogen.tasks.translate import TranslateTask
from cytogen.tasks.gan import GANTranslateTask  # noqa: E402  (registers "gan")
from cytogen.tasks.cyclegan import CycleGANTask  # noqa: E402  (registers "cyclegan")
from cytogen.tasks.vae import ReferenceVAETask, TargetVAETask  # noqa: E402  (registers "statcell_*")
from cytogen.tasks.cellseg import CellSegTask  # noqa: E402  (registers "cellseg_consistency")
from cytogen.tasks.segment import NucleusSegTask  # noqa: E402  (registers "segment_nuclei")

__all__ = ["TASKS", "CellSegTask", "CycleGANTask", "GANTranslateTask", "NucleusSegTask", "ReferenceVAETask",
           "TargetVAETask", "TranslateTask", "build_task", "register_task"]


def build_task(task: str, *, model: dict[str, Any], discriminator: dict[str, Any], loss: dict[str, Any],
               optim: dict[str, Any], gan: dict[str, Any], max_steps: int,
               grad_clip: float | None = None, instances: dict[str, Any] | None = None):
    """The Lightning module registered as ``task``, built with the recipe's sections
    (``instances`` only for a task that declares ``target_kind = "instances"``).

    Raises
    ------
    CytogenError
        For an unknown task name (the message lists the registered ones).
    """
    extra = {} if instances is None else {"instances": instances}
    return TASKS.build(task, model=model, discriminator=discriminator, loss=loss, optim=optim, gan=gan,
                       max_steps=max_steps, grad_clip=grad_clip, **extra)
