"""Loss functions as plain functions."""

from cytogen.losses.reconstruction import get_loss, l1_loss, masked_l1_loss, mse_loss

__all__ = ["get_loss", "l1_loss", "masked_l1_loss", "mse_loss"]

from cytogen.losses.adversarial import (  # noqa: E402
    ADVERSARIAL_KINDS,
    EMA,
    AdversarialLoss,
    adversarial_loss,
    check_soft_labels,
    r1_penalty,
    soft_noisy_labels,
)

__all__ += ["ADVERSARIAL_KINDS", "EMA", "AdversarialLoss", "adversarial_loss",
            "check_soft_labels", "r1_penalty", "soft_noisy_labels"]

from cytogen.losses.elbo import (  # noqa: E402
    beta_elbo_loss,
    check_beta,
    elbo_estimate,
    kl_per_dim,
    recon_sse,
)

__all__ += ["beta_elbo_loss", "check_beta", "elbo_estimate", "kl_per_dim", "recon_sse"]
