"""Lightning tasks: regression, conditional GAN and CycleGAN translation."""

from cytogen.tasks.translate import TranslateTask

__all__ = ["TranslateTask", "build_task"]


def build_task(task: str, arch: dict, discriminator: dict, loss: dict, optim: dict, gan: dict,
               max_steps: int, grad_clip: float | None = None):
    """The Lightning module for a recipe's ``task`` (translate, gan or cyclegan)."""
    if task == "translate":
        return TranslateTask(arch, loss, optim, max_steps=max_steps)
    if task == "gan":
        from cytogen.tasks.gan import GANTranslateTask

        return GANTranslateTask(arch, discriminator, loss, optim, gan, max_steps=max_steps,
                                grad_clip=grad_clip)
    if task == "cyclegan":
        from cytogen.tasks.cyclegan import CycleGANTask

        return CycleGANTask(arch, discriminator, loss, optim, gan, max_steps=max_steps, grad_clip=grad_clip)
    from cytogen.errors import CytogenError

    raise CytogenError(f"unknown task {task!r}; choose translate, gan or cyclegan")
