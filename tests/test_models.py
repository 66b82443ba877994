"""Model factory and progressive unfreezing."""
import pytest
import torch

from trainer import models
from trainer.config import RunConfig


def make(name, **kw):
    cfg = RunConfig.model_validate({"model": {"name": name, **kw}})
    return cfg


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18", "tf_efficientnetv2_s"])
def test_timm_models_build_with_classes_and_channels(name):
    model = models.build_model(make(name), num_classes=3, in_chans=1, input_shape=(1, 64, 64))
    out = model(torch.randn(2, 1, 64, 64).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 3)


def test_builtin_models():
    cnn = models.build_model(make("cnn1d_attention"), 2, 1, (1, 8000))
    assert cnn(torch.randn(3, 1, 8000)).shape == (3, 2)
    mlp = models.build_model(make("mfcc_mlp"), 4, 1, (1, 40, 63))
    assert mlp(torch.randn(3, 1, 40, 63)).shape == (3, 4)


def test_mfcc_mlp_with_context_reads_a_sound_the_same_wherever_it_falls():
    """The pooled form sees frames, not positions: a pattern moved along the time axis of a silent
    clip gives the same output (the flattened form does not: that is what the option is for)."""
    torch.manual_seed(0)
    pooled = models.MfccMlp(4, (1, 20, 60), hidden=[16, 8], context=9).eval()
    flat = models.MfccMlp(4, (1, 20, 60), hidden=[16, 8]).eval()
    pattern = torch.randn(1, 1, 20, 6)
    early, late = torch.zeros(2, 1, 1, 20, 60)
    early[..., 10:16], late[..., 40:46] = pattern, pattern
    assert torch.allclose(pooled(early), pooled(late), atol=1e-6)
    assert not torch.allclose(flat(early), flat(late), atol=1e-3)
    assert pooled(torch.randn(3, 1, 20, 60)).shape == (3, 4)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_trainable_fraction_counts_from_the_head(fraction):
    model = models.build_model(make("efficientnet_b0"), 3, 1, (1, 32, 32))
    groups = models.backbone_groups(model)
    trainable, total = models.apply_trainable(model, fraction)
    flags = [all(p.requires_grad for p in g) for g in groups]
    assert all(p.requires_grad for p in model.get_classifier().parameters())
    # trainable groups form a suffix (head side) and hold at most `fraction` of the backbone
    assert flags == sorted(flags)
    sizes = [sum(p.numel() for p in g) for g in groups]
    share = sum(s for s, f in zip(sizes, flags) if f) / sum(sizes)
    assert share <= fraction + 1e-9
    if fraction == 1.0:
        assert trainable == total
    if fraction == 0.0:
        assert trainable == sum(p.numel() for p in model.get_classifier().parameters())


def test_frozen_batchnorm_keeps_running_stats():
    model = models.build_model(make("resnet18"), 3, 1, (1, 32, 32))
    models.apply_trainable(model, 0.0)
    models.set_train_mode(model)
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 1, 32, 32))
    assert torch.equal(before, model.bn1.running_mean)
    assert model.get_classifier().training


def test_pretrained_from_local_file(tmp_path):
    src = models.build_model(make("resnet18"), 10, 3, (3, 32, 32))
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    cfg = make("resnet18", pretrained=str(path))
    dst = models.build_model(cfg, 4, 1, (1, 32, 32))   # other head, other in_chans: adapted/skipped
    assert torch.allclose(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    assert torch.allclose(dst.conv1.weight, src.conv1.weight.sum(dim=1, keepdim=True))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        models.load_pretrained(dst, tmp_path / "bad.pt")


def test_a_new_timm_classifier_starts_at_zero_so_the_first_loss_is_ln_c():
    torch.manual_seed(0)
    model = models.build_model(make("efficientnet_b0"), num_classes=4, in_chans=1, input_shape=(1, 128, 53))
    head = model.get_classifier()
    assert not head.weight.any() and not head.bias.any()
    model.train()
    x, y = torch.randn(8, 1, 128, 53), torch.randint(0, 4, (8,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-5)
    loss.backward()
    # timm's own init gave logits of std ~3.5 and a gradient norm ~200 here (every step clipped)
    assert torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9) < 5.0


def test_a_pretrained_classifier_that_fits_is_kept(tmp_path):
    src = models.build_model(make("resnet18"), 4, 3, (3, 32, 32))
    torch.nn.init.normal_(src.fc.weight)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = models.build_model(make("resnet18", pretrained=str(tmp_path / "w.pt")), 4, 3, (3, 32, 32))
    assert torch.equal(dst.fc.weight, src.fc.weight)


def test_a_random_frozen_backbone_tracks_batch_statistics():
    model = models.build_model(make("resnet18"), 3, 1, (1, 32, 32))
    models.apply_trainable(model, 0.0)
    models.set_train_mode(model, keep_frozen_stats=False)
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 1, 32, 32))
    assert not torch.equal(before, model.bn1.running_mean)
    assert not any(p.requires_grad for p in model.bn1.parameters())  # still frozen: only statistics move


@pytest.mark.parametrize("pretrained", [False, True])
def test_the_engine_keeps_frozen_statistics_only_of_pretrained_weights(tmp_path, pretrained):
    from trainer.engine import Trainer

    raw = {"data": {"source": "synthetic", "duration": 0.25, "sample_rate": 8000,
                    "synthetic": {"classes": 3, "train_per_class": 8, "val_per_class": 2}},
           "features": {"kind": "mel", "n_fft": 256, "hop_length": 64, "n_mels": 32},
           "model": {"name": "resnet18"}, "optim": {"batch_size": 8},
           "phases": [{"name": "head", "epochs": 1, "trainable": 0.0}]}
    if pretrained:
        weights = tmp_path / "w.pt"
        torch.save(models.build_model(make("resnet18"), 3, 1, (1, 32, 32)).state_dict(), weights)
        raw["model"]["pretrained"] = str(weights)
    trainer = Trainer(RunConfig.model_validate(raw), tmp_path)
    trainer.setup()
    assert trainer.model.bn1.training is not pretrained
