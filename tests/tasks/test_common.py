"""Shared task plumbing: one optimiser builder for every task, clipping under every precision,
the task registry."""

from __future__ import annotations

import pytest
import torch

from cytogen.errors import CytogenError
from cytogen.tasks import TASKS, build_task, register_task
from cytogen.tasks.common import GradClipMixin, NonFiniteLossError, build_optimizer, clip_gradients_

ARCH = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1,
        "kwargs": {"depth": 1, "base_channels": 2}}
DISC = {"name": "patchgan", "kwargs": {"n_layers": 1, "base_channels": 2}}
GAN = {"adversarial": "lsgan", "adv_weight": 1.0, "recon_weight": 100.0, "d_lr": 3e-4, "d_betas": [0.25, 0.9],
       "soft_labels": False, "soft_label_steps": 10, "r1_gamma": 0.0, "ema_decay": 0.0, "cycle_weight": 10.0,
       "identity_weight": 0.5, "pool_size": 2}


def _optimizers(task_name: str, **optim):
    cfg = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "scheduler": "none",
           "warmup_steps": 0, **optim}
    task = build_task(task_name, model=ARCH, discriminator=DISC, loss={"name": "l1"}, optim=cfg, gan=GAN,
                      max_steps=10)
    out = task.configure_optimizers()
    opts = out[0] if isinstance(out, tuple) else out
    return task, (list(opts) if isinstance(opts, (list, tuple)) else [opts])


@pytest.mark.parametrize("task_name", ["gan", "cyclegan"])
def test_sgd_builds_sgd_for_both_players_with_their_own_lr_and_momentum(task_name):
    task, (opt_g, opt_d) = _optimizers(task_name, name="sgd", lr=0.05, betas=[0.7, 0.999], weight_decay=1e-3)
    assert type(opt_g) is torch.optim.SGD and type(opt_d) is torch.optim.SGD
    g, d = opt_g.param_groups[0], opt_d.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.05, 0.7, 1e-3)
    assert (d["lr"], d["momentum"], d["weight_decay"]) == (3e-4, 0.25, 1e-3)  # gan.d_lr, gan.d_betas[0]
    # each optimiser holds exactly its player's parameters
    assert {id(p) for p in opt_g.param_groups[0]["params"]} == {id(p) for p in task.generator_parameters()}
    assert {id(p) for p in opt_d.param_groups[0]["params"]} == {id(p) for p in task.discriminator_parameters()}


@pytest.mark.parametrize("task_name", ["gan", "cyclegan", "translate"])
def test_adamw_builds_adamw_with_weight_decay_and_fused(task_name):
    _, opts = _optimizers(task_name, name="adamw", weight_decay=0.03, fused=True, betas=[0.8, 0.99])
    assert all(type(o) is torch.optim.AdamW for o in opts)
    assert all(o.param_groups[0]["weight_decay"] == 0.03 and o.param_groups[0]["fused"] for o in opts)
    assert opts[0].param_groups[0]["betas"] == (0.8, 0.99)
    if task_name != "translate":
        assert opts[1].param_groups[0]["betas"] == (0.25, 0.9) and opts[1].param_groups[0]["lr"] == 3e-4


def test_adam_is_plain_adam_and_unknown_names_are_refused():
    _, opts = _optimizers("gan", name="adam")
    assert all(type(o) is torch.optim.Adam for o in opts)
    with pytest.raises(CytogenError, match="optim.name 'lion'"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], {"name": "lion", "lr": 1.0})


def test_schedules_cover_both_optimisers():
    task = build_task("gan", model=ARCH, discriminator=DISC, loss={"name": "l1"}, gan=GAN, max_steps=10,
                      optim={"name": "adam", "lr": 1e-3, "betas": [0.5, 0.999], "scheduler": "cosine"})
    opts, scheds = task.configure_optimizers()
    assert [s["scheduler"].optimizer for s in scheds] == list(opts)


def _param_with_grad(scaler=None):
    """A parameter whose loss has the gradient ``g`` (returned); scaled by ``scaler`` if given."""
    g = torch.randn(50, generator=torch.Generator().manual_seed(1))
    p = torch.nn.Parameter(torch.randn(50, generator=torch.Generator().manual_seed(0)))
    loss = (p * g).sum()
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return p, g


@pytest.mark.parametrize("fused", [False, True])
def test_clipping_unscales_first_under_a_grad_scaler(fused):
    """16-mixed: gradients arrive multiplied by the loss scale; the clip must see true units,
    and the scaler's step must then not divide them a second time (fused or not)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    p, g = _param_with_grad(scaler)
    assert float(p.grad.norm()) == pytest.approx(2.0 ** 10 * float(g.norm()), rel=1e-5)
    opt = torch.optim.SGD([p], lr=0.1, fused=fused or None)
    before = p.detach().clone()
    norm = clip_gradients_(opt, max_norm=0.5 * float(g.norm()), scaler=scaler)
    assert float(norm) == pytest.approx(float(g.norm()), rel=1e-5)  # measured unscaled
    torch.testing.assert_close(p.grad, 0.5 * g, rtol=1e-5, atol=1e-7)  # clipped in true units
    scaler.step(opt)  # SGD's step shows whether the scaler divided the gradient again
    scaler.update()
    torch.testing.assert_close(p.detach(), before - 0.1 * 0.5 * g, rtol=1e-5, atol=1e-6)


def test_clipping_without_scaler_and_already_unscaled_grads():
    p, _ = _param_with_grad()
    opt = torch.optim.SGD([p], lr=0.1)
    n0 = float(p.grad.norm())
    clip_gradients_(opt, max_norm=n0 / 4)
    assert float(p.grad.norm()) == pytest.approx(n0 / 4, rel=1e-5)
    clip_gradients_(opt, max_norm=10 * n0)  # a loose bound leaves them alone
    assert float(p.grad.norm()) == pytest.approx(n0 / 4, rel=1e-5)



def _hook_owner(grad_clip, scaler=None):
    from types import SimpleNamespace

    owner = GradClipMixin()
    owner.hparams = {"grad_clip": grad_clip}
    owner.trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), global_step=7)
    return owner


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_a_nan_gradient_behind_a_finite_loss_stops_before_the_step(grad_clip):
    w = torch.nn.Parameter(torch.zeros(3))
    loss = w.sqrt().sum()  # finite loss (0), infinite gradient at 0
    assert torch.isfinite(loss)
    loss.backward()
    opt = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(NonFiniteLossError) as info:
        _hook_owner(grad_clip).on_before_optimizer_step(opt)
    assert info.value.step == 7 and "gradient" in info.value.name
    w.grad = torch.ones(3)  # finite gradients pass
    _hook_owner(grad_clip).on_before_optimizer_step(opt)
    w.grad = torch.full((3,), float("inf"))  # 16-mixed: the GradScaler owns inf gradients (skips the step)
    _hook_owner(None, scaler=torch.amp.GradScaler("cpu")).on_before_optimizer_step(opt)

def test_registered_task_is_built_and_accepted_by_recipes():
    from cytogen.config import recipe_from_dict
    from cytogen.tasks.translate import TranslateTask

    @register_task("test_only_task")
    class Mine(TranslateTask):
        paired = False

    try:
        assert "test_only_task" in TASKS
        task = build_task("test_only_task", model=ARCH, discriminator=DISC, loss={"name": "l1"},
                          optim={"name": "adam", "lr": 1e-3}, gan=GAN, max_steps=5)
        assert isinstance(task, Mine)
        assert recipe_from_dict({"task": "test_only_task"}).task == "test_only_task"
    finally:
        TASKS.unregister("test_only_task")
    with pytest.raises(CytogenError, match="test_only_task"):
        recipe_from_dict({"task": "test_only_task"})
    with pytest.raises(CytogenError, match="unknown task 'nope'.*cyclegan.*gan.*translate"):
        build_task("nope", model=ARCH, discriminator=DISC, loss={}, optim={}, gan=GAN, max_steps=1)
