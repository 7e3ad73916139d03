"""erase: make a trained diffusion model or classifier forget a class or a concept (SFR-on)."""

__version__ = "0.1.0"


def erase(model, forget, remain, loss_fn, config=None, forget_objective=None, mask=None, accelerator=None):
    """Erase what `forget` holds from `model` with SFR-on; returns the model and the run history.

    `loss_fn(model, batch)` gives per-sample losses; `forget` and `remain` are iterables of batches.
    The Fisher mask is computed here unless `mask` is given. See `erase.core.sfron.unlearn`.
    """
    from erase.core.fisher import fisher_diagonal
    from erase.core.losses import ascent_objective
    from erase.core.saliency import saliency_mask
    from erase.core.sfron import SFRonConfig, unlearn

    config = config or SFRonConfig()
    forget, remain = list(forget), list(remain)
    if mask is None:
        fisher_forget = fisher_diagonal(model, loss_fn, forget, desc="fisher (forget)")
        fisher_remain = fisher_diagonal(model, loss_fn, remain, desc="fisher (remain)")
        mask = saliency_mask(fisher_forget, fisher_remain, config.gamma)
    objective = forget_objective or ascent_objective(loss_fn, config.temperature)
    history = unlearn(model, objective, loss_fn, forget, remain, config, mask=mask, accelerator=accelerator)
    return model, history
