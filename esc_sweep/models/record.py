"""What a saved bundle records about its model: an architecture that rebuilds offline, and its front end."""

from __future__ import annotations

from esc_sweep.models.hf import architecture_config


def portable_model_config(model_cfg: dict) -> dict:
    """The model section for a saved bundle: rebuilds the architecture without fetching any weights.

    The trained weights are in the bundle (``front_end_record`` keeps where the pretrained ones
    came from); an HF model keeps its architecture in ``model.kwargs.hf_config``, read from the
    checkpoint's config (local folder or the Hugging Face cache, both present after training).
    """
    portable = dict(model_cfg)
    weights = portable.get("weights")
    portable["weights"], portable["weights_sha256"] = None, None
    if portable.get("name") == "hf" and weights:
        portable["kwargs"] = {**dict(portable.get("kwargs") or {}), "hf_config": architecture_config(str(weights))}
    return portable


FRONT_END_KEYS = ("kind", "sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max",
                  "top_db", "mel_scale", "normalize")


def front_end_record(config: dict) -> dict:
    """What a bundle records of its front end: the features used, what the weights expected, their source."""
    features = config.get("features", {})
    model = config.get("model", {})
    return {
        "features": {k: features.get(k) for k in FRONT_END_KEYS if k in features},
        "expected_by_weights": dict(model.get("front_end") or {}),
        "weights": model.get("weights"),
        "weights_sha256": model.get("weights_sha256"),
        "finetune": model.get("finetune", "full"),
    }
