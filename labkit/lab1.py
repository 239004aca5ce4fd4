"""The Lab-1 checkpoints the Lab-2 notebooks (04, 05, 06) start from, set up in one call."""

from .training import checkpoint_or_train


def lab1_settings(quick: bool = False) -> dict:
    """Lab 1's training settings for each network, used only when its checkpoint must be trained.

    The report trains jsc-custom for 20 epochs, batch 128, lr 1e-4; ``quick`` (what the tests run)
    trains both networks for 2 epochs at batch 256 and lr 1e-3, enough to have something to analyse.
    """
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be True or False, not {quick!r}")
    return {
        "jsc-tiny": dict(max_epochs=2 if quick else 10, batch_size=256, learning_rate=1e-3),
        "jsc-custom": dict(max_epochs=2 if quick else 20, batch_size=256 if quick else 128,
                           learning_rate=1e-3 if quick else 1e-4),
    }


def lab1_checkpoints(data, quick: bool = False, *, progress: bool = False) -> dict:
    """``{model name: checkpoint_or_train(...) result}`` for jsc-tiny and jsc-custom.

    Each reuses ``outputs/lab-1_<model>/software/training_ckpts/best.ckpt`` when it holds that
    model trained on exactly ``data``, so a notebook picks up Lab 1's work, and otherwise trains
    one now with :func:`lab1_settings` (so the notebook also runs on a fresh checkout).
    """
    return {name: checkpoint_or_train(name, data, f"lab-1_{name}", progress=progress, **kw)
            for name, kw in lab1_settings(quick).items()}
