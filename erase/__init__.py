"""erase: make a trained diffusion model or classifier forget a class or a concept (SFR-on)."""

__version__ = "0.1.0"


def erase(model, forget, remain, loss_fn, config=None, forget_objective=None, mask=None, accelerator=None):
    """Erase what `forget` holds from `model` with SFR-on; returns the model and the run history.

    `loss_fn(model, batch)` gives per-sample losses; `forget` and `remain` are iterables of batches.
    The Fisher mask is computed here unless `mask` is given. See `erase.core.sfron.unlearn`.
    """
    from erase.core import methods
    from erase.core.sfron import SFRonConfig, unlearn

    config = config or SFRonConfig()
    forget, remain = list(forget), list(remain)
    sfron = methods.METHODS["sfron"]
    if mask is None:
        mask, _ = methods.method_mask(sfron, model, loss_fn, forget, remain, config.gamma, seed=config.seed)
    objective = forget_objective or methods.forget_objective(sfron, loss_fn, config.temperature)
    history = unlearn(model, objective, loss_fn, forget, remain, config, mask=mask, accelerator=accelerator)
    return model, history
