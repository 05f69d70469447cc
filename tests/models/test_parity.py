"""Parity with the reference implementations, on random weights (nothing is downloaded).

Each reference model is built with random weights (batch-norm statistics
included), saved in its original checkpoint format, loaded into esc_sweep's
backbone through ``model.weights=<file or folder>`` and the converter, and fed
the same input: the outputs must agree. This proves the architecture and the
key mapping; the published weights then load the same way.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from esc_sweep.config import validate
from esc_sweep.errors import ConfigError
from esc_sweep.features.transforms import build_features
from esc_sweep.models import checkpoint_front_end_mismatches, count_parameters, create_model, mobilenet
from tests.models.reference import panns_reference_models


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics, so a wrong mapping cannot hide behind identity layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.startswith(("spectrogram_extractor", "logmel_extractor")):
                continue  # the reference's fixed STFT and mel matrices stay what they are
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
    return model.eval()


def _chirp(sample_rate: int, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(sample_rate * seconds)) / sample_rate
    noise = torch.randn(len(t), generator=torch.Generator().manual_seed(1))
    return (0.3 * torch.sin(2 * math.pi * (200 + 3000 * t) * t) + 0.05 * noise).unsqueeze(0)


# --------------------------------------------------------------------------- PANNs


@pytest.fixture(scope="module")
def panns_cnn14_reference():
    ref = panns_reference_models().Cnn14(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64,
                                         fmin=50, fmax=14000, classes_num=527)
    return _randomize(ref)


def test_panns_cnn14_matches_panns_inference(panns_cnn14_reference, compose_cfg, tmp_path):
    ref = panns_cnn14_reference
    checkpoint = tmp_path / "Cnn14_random.pth"
    torch.save({"model": ref.state_dict(), "iteration": 0}, checkpoint)  # the published file's layout
    cfg = compose_cfg(["model=panns_cnn14", f"model.weights={checkpoint}"])
    validate(cfg)
    ours = create_model(cfg.model, 527, cfg.features.normalize, cfg.features.n_mels).eval()
    # The converter drops the AudioSet head (ours is fresh); copy it in to compare the logits too.
    ours.backbone.head.load_state_dict({"weight": ref.fc_audioset.weight, "bias": ref.fc_audioset.bias})

    log_mel = torch.randn(2, 1, 101, 64, generator=torch.Generator().manual_seed(2)) * 10 - 30
    ref = copy.deepcopy(ref)
    ref.spectrogram_extractor, ref.logmel_extractor = nn.Identity(), nn.Identity()  # feed the log-mel itself
    with torch.no_grad():
        expected = ref(log_mel)
        x = log_mel.transpose(2, 3)  # esc_sweep's layout: [B, 1, mels, frames]
        embedding = ours.backbone.embed(ours.standardize(x))
        probabilities = torch.sigmoid(ours(x))
    assert torch.allclose(embedding, expected["embedding"], atol=1e-5, rtol=1e-4)
    assert torch.allclose(probabilities, expected["clipwise_output"], atol=1e-6)
    assert count_parameters(ours) == sum(p.numel() for n, p in ref.named_parameters()
                                         if not n.startswith(("spectrogram_extractor", "logmel_extractor")))


def test_panns_front_end_matches_torchlibrosa(panns_cnn14_reference, compose_cfg):
    """model=panns_* sets features.* so that esc_sweep's log-mel is torchlibrosa's (what PANNs saw)."""
    ref = panns_cnn14_reference
    wave = _chirp(32000)
    with torch.no_grad():
        theirs = ref.logmel_extractor(ref.spectrogram_extractor(wave)).transpose(2, 3)  # [B, 1, mels, frames]
        ours = build_features(compose_cfg(["model=panns_cnn14"]).features)(wave)
    assert ours.shape == theirs.shape == (1, 1, 64, 101)
    assert (ours - theirs).abs().max() < 0.01  # dB, over a 50 dB range
    # The default (HTK) filter bank is measurably different: the key does something.
    htk = build_features(compose_cfg(["model=panns_cnn14", "features.mel_scale=htk"]).features)(wave)
    assert (htk - theirs).abs().max() > 1.0


# The published CNN6 / CNN10 checkpoints' tensors (audioset_tagging_cnn/pytorch/models.py); no
# installable package provides these two models, so their layout is checked against this table.
def _original_panns_keys(arch: str) -> dict[str, tuple[int, ...]]:
    widths = [64, 128, 256, 512]
    keys: dict[str, tuple[int, ...]] = {"spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
                                        "spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
                                        "logmel_extractor.melW": (513, 64)}
    for stat in ("weight", "bias", "running_mean", "running_var"):
        keys[f"bn0.{stat}"] = (64,)
    c_in = 1
    for i, c in enumerate(widths, start=1):
        convs = [("conv1", "bn1", 5)] if arch == "cnn6" else [("conv1", "bn1", 3), ("conv2", "bn2", 3)]
        for conv, bn, k in convs:
            keys[f"conv_block{i}.{conv}.weight"] = (c, c_in, k, k)
            for stat in ("weight", "bias", "running_mean", "running_var"):
                keys[f"conv_block{i}.{bn}.{stat}"] = (c,)
            c_in = c
    keys.update({"fc1.weight": (512, 512), "fc1.bias": (512,), "fc_audioset.weight": (527, 512),
                 "fc_audioset.bias": (527,)})
    return keys


@pytest.mark.parametrize("arch", ["cnn6", "cnn10"])
def test_panns_cnn6_cnn10_load_the_original_layout(arch, compose_cfg, tmp_path):
    g = torch.Generator().manual_seed(3)
    original = {k: torch.randn(shape, generator=g) for k, shape in _original_panns_keys(arch).items()}
    checkpoint = tmp_path / f"{arch}.pth"
    torch.save({"model": original}, checkpoint)
    cfg = compose_cfg([f"model=panns_{arch}", f"model.weights={checkpoint}"])
    ours = create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels)
    state = ours.backbone.state_dict()
    for key, tensor in original.items():
        if key.startswith(("spectrogram_extractor", "logmel_extractor", "fc_audioset")):
            assert key not in state
        else:
            assert torch.equal(state[key], tensor), key
    assert ours.backbone.head.weight.shape == (5, 512)
    expected = {"cnn6": 4_837_455 - 527 * 513, "cnn10": 5_219_279 - 527 * 513}[arch]  # PANNs' counts, less the head
    assert count_parameters(ours.backbone) - 5 * 513 == expected


def test_weights_of_another_architecture_are_refused_in_one_line(compose_cfg, tmp_path):
    original = {k: torch.zeros(s) for k, s in _original_panns_keys("cnn6").items()}
    checkpoint = tmp_path / "cnn6.pth"
    torch.save({"model": original}, checkpoint)
    cfg = compose_cfg(["model=panns_cnn10", f"model.weights={checkpoint}"])
    with pytest.raises(ConfigError, match=r"does not fit this model, PANNs CNN10 .*differ in shape") as err:
        create_model(cfg.model, 5, "none", 64)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- EfficientAT


# Parameter counts EfficientAT publishes for its AudioSet models (527 classes).
@pytest.mark.parametrize("name,published_millions", [("mn04", 0.983), ("mn05", 1.43), ("mn10", 4.88)])
def test_efficientat_parameter_counts(name, published_millions, compose_cfg):
    cfg = compose_cfg(["model=efficientat_mn05", f"model.name=efficientat_{name}"])
    model = create_model(cfg.model, 527, cfg.features.normalize, cfg.features.n_mels)
    assert count_parameters(model) / 1e6 == pytest.approx(published_millions, abs=0.01)


def test_efficientat_state_dict_round_trip(compose_cfg, tmp_path):
    original = _randomize(mobilenet.MobileNetAudio(527, width_mult=0.1))
    state = original.state_dict()
    # EfficientAT's key layout: torchvision conv blocks, Linear squeeze-excitation, MLP head.
    # (At width 0.1 block 4 has no expansion conv: 24 and 72 channels both round to 8.)
    for key in ("features.0.0.weight", "features.4.block.1.conc_se_layers.0.fc1.weight",
                "features.4.block.2.1.running_var", "classifier.2.weight", "classifier.5.weight"):
        assert key in state, key
    checkpoint = tmp_path / "mn01_random.pt"
    torch.save(state, checkpoint)
    cfg = compose_cfg(["model=efficientat_mn01", f"model.weights={checkpoint}"])
    # Built for esc_sweep's plain mel (features.kind=mel); the configs' default, efficientat, is checked below.
    ours = create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels, "mel").eval()
    loaded = ours.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("classifier.5."))
    assert loaded["classifier.5.weight"].shape == (5, 128)
    x = torch.randn(2, 1, 128, 100) * 10 - 40
    with torch.no_grad():
        assert torch.allclose(ours.backbone.embed(x), original.embed(x))
        # The input step gives EfficientAT's scale, (ln(mel + 1e-5) + 4.5) / 5, from decibels; esc_sweep's
        # plain mel has no pre-emphasis, so each band first gets the filter's power gain over it.
        power = 10 ** (x / 10) * mobilenet.pre_emphasis_band_gain().view(1, 1, -1, 1)
        reference = original.classifier[:4](original.features((torch.log(power + 1e-5) + 4.5) / 5))
        assert torch.allclose(ours.backbone.embed(x), reference, atol=1e-6)
        # From EfficientATMel's output the band gain is already in the spectrogram: none is applied.
        exact = create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels,
                             cfg.features.kind).backbone.eval()
        assert cfg.features.kind == "efficientat" and exact.front_end == "efficientat"
        assert torch.allclose(exact.prepare(x), (torch.log(10 ** (x / 10) + 1e-5) + 4.5) / 5, atol=1e-6)
        assert not torch.allclose(exact.prepare(x), ours.backbone.prepare(x), atol=1e-2)


# --------------------------------------------------------------------------- Hugging Face AST


@pytest.fixture(scope="module")
def tiny_ast(tmp_path_factory):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    folder = tmp_path_factory.mktemp("tiny_ast")
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       num_mel_bins=32, max_length=120, num_labels=5)
    torch.manual_seed(4)
    model = ASTForAudioClassification(config).eval()
    model.save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=32, max_length=120).save_pretrained(folder)
    return folder, model


def test_ast_loads_from_a_local_folder_with_identical_logits(tiny_ast, compose_cfg):
    folder, reference = tiny_ast
    cfg = compose_cfg(["model=ast", f"model.weights={folder}", "model.front_end.n_mels=32"])
    validate(cfg)
    ours = create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels).eval()
    x = torch.randn(2, 1, 32, 101, generator=torch.Generator().manual_seed(5)) * 3 - 5  # ln energies
    with torch.no_grad():
        expected = reference(input_values=ours.backbone.prepare(x)).logits
        assert torch.allclose(ours(x), expected, atol=1e-5)
    # The adapter is the feature extractor's: fbank as is, zero-padded to max_length, (x - mean) / (2 std).
    prepared = ours.backbone.prepare(x)
    assert prepared.shape == (2, 120, 32)
    assert torch.allclose(prepared[0, :101], (x[0, 0].T - -4.2677393) / (2 * 4.5689974), atol=1e-6)
    assert torch.allclose(prepared[0, 101:], torch.full((19, 32), 4.2677393 / (2 * 4.5689974)), atol=1e-6)


def test_ast_with_other_classes_keeps_the_trunk(tiny_ast, compose_cfg):
    folder, reference = tiny_ast
    cfg = compose_cfg(["model=ast", f"model.weights={folder}", "model.front_end.n_mels=32"])
    ours = create_model(cfg.model, 3, cfg.features.normalize, 32).eval()
    x = torch.randn(1, 1, 32, 90) * 3 - 5
    with torch.no_grad():
        inputs = ours.backbone.prepare(x)
        theirs = reference.audio_spectrogram_transformer(input_values=inputs).pooler_output
        mine = ours.backbone.model.audio_spectrogram_transformer(input_values=inputs).pooler_output
    assert torch.allclose(mine, theirs, atol=1e-6)
    assert ours.backbone.get_classifier().out_features == 3


def _extractor_input_values(wave: torch.Tensor, **settings) -> torch.Tensor:
    from transformers import ASTFeatureExtractor

    extractor = ASTFeatureExtractor(**settings)
    return extractor(wave[0].numpy(), sampling_rate=16000, return_tensors="pt").input_values


def test_ast_front_end_equals_the_feature_extractor(compose_cfg):
    """features.kind=fbank + the input adapter give ASTFeatureExtractor's input_values (here padded to 400 frames)."""
    wave = _chirp(16000, seconds=3.0)  # a chirp plus white noise: 1 + (48000 - 400) // 160 = 298 Kaldi frames
    theirs = _extractor_input_values(wave, max_length=400)
    cfg = compose_cfg(["model=ast", "+model.kwargs.hf_config={hidden_size:16,num_hidden_layers:1,"
                       "num_attention_heads:1,intermediate_size:16,max_length:400}"])
    validate(cfg)
    fbank = build_features(cfg.features)(wave)
    assert fbank.shape == (1, 1, 128, 298)
    ours = create_model(cfg.model, 2, cfg.features.normalize, cfg.features.n_mels).backbone.prepare(fbank)
    assert ours.shape == theirs.shape == (1, 400, 128)
    assert (ours - theirs).abs().max() < 1e-6  # the same kaldi.fbank call and arithmetic: bit-identical on CPU
    assert theirs[0, 298:].std() == 0 and theirs[0, :298].std() > 0.3  # the comparison covers padding and signal


def test_ast_from_raw_waveform_gives_the_reference_logits(tiny_ast, compose_cfg):
    """Waveform -> our front end -> our AST equals ASTFeatureExtractor -> ASTForAudioClassification (truncated)."""
    folder, reference = tiny_ast
    wave = _chirp(16000, seconds=3.0)  # 298 frames, cut to the model's 120
    with torch.no_grad():
        expected = reference(input_values=_extractor_input_values(wave, num_mel_bins=32, max_length=120)).logits
    cfg = compose_cfg(["model=ast", f"model.weights={folder}", "model.front_end.n_mels=32"])
    validate(cfg)
    ours = create_model(cfg.model, 5, cfg.features.normalize, cfg.features.n_mels).eval()
    with torch.no_grad():
        logits = ours(build_features(cfg.features)(wave))
    assert logits.shape == expected.shape == (1, 5)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert expected.std() > 0.01  # not a degenerate output that anything would match


def test_ast_weights_refuse_another_front_end_kind(tiny_ast, compose_cfg):
    folder, _ = tiny_ast
    cfg = compose_cfg(["model=ast", f"model.weights={folder}", "model.front_end.n_mels=32", "features.kind=mel"])
    with pytest.raises(ConfigError, match=r"features\.kind='mel'.*kind='fbank'"):
        validate(cfg)
    # The checkpoint's own extractor says the same (what the dry run checks, whatever model.front_end says).
    ours = create_model(cfg.model, 5, "none", 32)
    assert checkpoint_front_end_mismatches(ours, cfg.features) == {"kind": ("mel", "fbank")}


def test_ast_layer_wise_lr_decay_finds_every_block(tiny_ast, compose_cfg):
    """layer_names() must name real submodules whatever transformers calls its block list."""
    from esc_sweep.training.optim import build_optimizer

    folder, _ = tiny_ast
    cfg = compose_cfg(["model=ast", f"model.weights={folder}", "model.front_end.n_mels=32",
                       "optimizer.layer_decay=0.5"])
    model = create_model(cfg.model, 5, cfg.features.normalize, 32)
    names = model.backbone.layer_names()
    for name in names:
        model.backbone.get_submodule(name)  # raises when absent
    optimizer = build_optimizer(cfg.optimizer, model, torch.device("cpu"))
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert len(rates) >= len(names) - 1  # one rate per depth: the decay reached every block
