"""Reconstruction losses, embeddings and the SPN (negative) loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mcir_cli.errors import McirError
from mcir_cli.losses.embeddings import PixelEmbedding, VGGEmbedding, make_embedding, vgg_weight_file_name
from mcir_cli.losses.reconstruction import charbonnier, make_rec_loss, psnr_loss, ssim_loss
from mcir_cli.losses.reconstruction import differentiable_ssim as ssim
from mcir_cli.losses.spn import SPNLoss, total_loss

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)

# ------------------------------------------------------------------ reconstruction losses


def test_charbonnier_by_hand():
    pred = torch.tensor([[[[0.0, 0.5]]]])
    target = torch.tensor([[[[0.0, 0.2]]]])
    eps = 1e-3
    expected = (math.sqrt(eps**2) + math.sqrt(0.3**2 + eps**2)) / 2
    assert charbonnier(pred, target).item() == pytest.approx(expected, rel=1e-5)


def test_psnr_loss_is_nafnet_formula():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.zeros(2, 1, 2, 2)
    target[0] = 0.1  # mse 0.01 -> PSNR 20 dB
    target[1, 0, 0, 0] = 2 * math.sqrt(0.001)  # one of 4 pixels: mse 0.001 -> 30 dB
    got = psnr_loss(pred, target).item()
    mse0, mse1 = 0.01, 0.001
    expected = 10 / math.log(10) * (math.log(mse0 + 1e-8) + math.log(mse1 + 1e-8)) / 2
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(-(20 + 30) / 2, abs=1e-4)  # = -mean PSNR in dB


def test_ssim_constant_images_by_hand():
    a, b = 0.3, 0.6
    x = torch.full((1, 1, 12, 12), a, dtype=torch.float64)
    y = torch.full((1, 1, 12, 12), b, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # variances are 0
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)


def test_ssim_matches_skimage_gaussian():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 24, 20, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(1, 1, 24, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = structural_similarity(
        x[0, 0].numpy(), y[0, 0].numpy(), data_range=1.0, gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False,
    )
    assert ssim(x, y).item() == pytest.approx(ref, abs=1e-6)


def test_ssim_loss_differentiable():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    ssim_loss(x, torch.rand(1, 3, 16, 16)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_make_rec_loss_names():
    x, y = torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12)
    for name in ("l1", "mse", "charbonnier", "psnr", "ssim"):
        assert torch.isfinite(make_rec_loss(name)(x, y))
    assert make_rec_loss("l1")(x, y).item() == pytest.approx((x - y).abs().mean().item())
    assert make_rec_loss("mse")(x, y).item() == pytest.approx(((x - y) ** 2).mean().item())
    with pytest.raises(McirError, match="unknown reconstruction loss"):
        make_rec_loss("perceptual")


def test_total_loss_sign():
    assert total_loss(torch.tensor(1.0), torch.tensor(2.0), 0.1).item() == pytest.approx(0.8)


# ------------------------------------------------------------------ SPN loss


def test_spn_pixel_by_hand():
    rec = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])  # (1, 1, 2, 2)
    n0 = torch.tensor([[[[1.0, 1.0], [0.5, 0.0]]]])  # |d| = 1, 0, 0, 0.5 -> 0.375
    n1 = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])  # |d| = 0, 1, 0.5, 0.5 -> 0.5
    loss = SPNLoss(PixelEmbedding())(rec, torch.stack([n0, n1]))
    assert loss.item() == pytest.approx((0.375 + 0.5) / 2)


class _TwoMaps(nn.Module):
    """Embedding with two maps of different sizes, to check the per-layer weights."""

    layer_weights = [0.25, 2.0]

    def forward(self, x):
        return [x, nn.functional.avg_pool2d(x, 2)]


def test_spn_layer_weights_by_hand():
    g = torch.Generator().manual_seed(0)
    rec = torch.rand(2, 3, 4, 4, generator=g)
    negs = torch.rand(3, 2, 3, 4, 4, generator=g)
    pool = nn.functional.avg_pool2d
    expected = 0.0
    for i in range(3):
        expected += 0.25 * (rec - negs[i]).abs().mean().item()
        expected += 2.0 * (pool(rec, 2) - pool(negs[i], 2)).abs().mean().item()
    expected /= 3
    assert SPNLoss(_TwoMaps())(rec, negs).item() == pytest.approx(expected, rel=1e-6)


def test_spn_negatives_get_no_gradient():
    rec = torch.rand(1, 3, 8, 8, requires_grad=True)
    negs = torch.rand(2, 1, 3, 8, 8, requires_grad=True)
    SPNLoss(PixelEmbedding())(rec, negs).backward()
    assert rec.grad is not None and negs.grad is None


def test_spn_embeds_negatives_in_one_call():
    calls = []

    class Counting(PixelEmbedding):
        def forward(self, x):
            calls.append(tuple(x.shape))
            return [x]

    SPNLoss(Counting())(torch.rand(2, 3, 4, 4), torch.rand(4, 2, 3, 4, 4))
    assert sorted(calls) == [(2, 3, 4, 4), (8, 3, 4, 4)]


def _one_sgd_step_distance(embedding: nn.Module) -> tuple[float, float]:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(2, 3, 16, 16)
    negs = torch.rand(2, 2, 3, 16, 16)
    spn = SPNLoss(embedding)
    before = spn(model(x), negs).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = total_loss(torch.zeros(()), spn(model(x), negs), lam=1.0)  # = -L_neg
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = spn(model(x), negs).item()
    return before, after


def test_gradient_sign_pixel_pushes_away_from_negatives():
    before, after = _one_sgd_step_distance(PixelEmbedding())
    assert after > before


def test_gradient_sign_vgg16_random_pushes_away_from_negatives():
    before, after = _one_sgd_step_distance(VGGEmbedding("vgg16", init="random"))
    assert after > before


def test_spn_bf16_autocast_close():
    emb = VGGEmbedding("vgg16", init="random")
    rec, negs = torch.rand(1, 3, 16, 16), torch.rand(2, 1, 3, 16, 16)
    ref = SPNLoss(emb)(rec, negs)
    low = SPNLoss(emb)(rec, negs, dtype=torch.bfloat16)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=2e-2)


# ------------------------------------------------------------------ VGG embeddings


def test_vgg16_layer_selection():
    emb = VGGEmbedding("vgg16", init="random", seed=0)
    assert len(emb.features) == 16
    assert emb.layer_weights == [0.2, 0.3, 0.5]
    x = torch.rand(1, 3, 32, 32)
    maps = emb(x)
    assert [tuple(m.shape) for m in maps] == [(1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8)]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        manual = emb.features[:4]((x - mean) / std)
    assert torch.allclose(maps[0], manual)
    assert "RANDOM" in emb.description and "seed 0" in emb.description
    assert all(not p.requires_grad for p in emb.parameters())
    emb.train()
    assert not emb.training


def test_vgg19_layer_selection_and_grey():
    emb = make_embedding("vgg19", init="random", seed=1)
    assert len(emb.features) == 30
    assert emb.layer_weights == [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]
    maps = emb(torch.rand(1, 1, 16, 16))  # grey is repeated to RGB
    assert [m.shape[1] for m in maps] == [64, 128, 256, 512, 512]
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2, 1]


def test_vgg_random_is_seeded_and_rng_untouched():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = VGGEmbedding("vgg16", init="random", seed=3)
    b = VGGEmbedding("vgg16", init="random", seed=3)
    c = VGGEmbedding("vgg16", init="random", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def _vgg16_features_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(seed)
    return make_layers(cfgs["D"]).state_dict()  # all 13 conv layers, keys "N.weight"


def test_vgg_loads_state_dict_files(tmp_path):
    from safetensors.torch import save_file

    feats = _vgg16_features_state_dict()
    full = {f"features.{k}": v for k, v in feats.items()}
    full["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    torch.save(full, tmp_path / "vgg_full.pth")
    save_file({k: v.contiguous() for k, v in feats.items()}, str(tmp_path / "vgg_feat.safetensors"))
    for name in ("vgg_full.pth", "vgg_feat.safetensors"):
        emb = make_embedding("vgg16", weights=tmp_path / name)
        assert torch.equal(emb.features[0].weight, feats["0.weight"])
        assert torch.equal(emb.features[14].bias, feats["14.bias"])
        assert name in emb.description


def test_vgg_bad_weights_file(tmp_path):
    torch.save({"0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(McirError, match="missing"):
        VGGEmbedding("vgg16", weights=tmp_path / "partial.pth")
    with pytest.raises(McirError, match="not found"):
        VGGEmbedding("vgg16", weights=tmp_path / "absent.pth")


def _offline(monkeypatch, tmp_path):
    from torchvision.models import VGG16_Weights

    def fail(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    monkeypatch.setattr(VGG16_Weights, "get_state_dict", fail)


def test_vgg_missing_weights_message(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(McirError) as info:
        VGGEmbedding("vgg16", init="pretrained")
    msg = str(info.value)
    assert "vgg16-397923af.pth" in msg
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in msg
    assert "--embedding-weights FILE" in msg and "--embedding-init random" in msg
    assert "\n" not in msg


def test_vgg_uses_torch_hub_cache(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    feats = _vgg16_features_state_dict(1)
    cached = tmp_path / "checkpoints" / vgg_weight_file_name("vgg16")
    cached.parent.mkdir()
    torch.save({f"features.{k}": v for k, v in feats.items()}, cached)
    emb = VGGEmbedding("vgg16")
    assert torch.equal(emb.features[12].weight, feats["12.weight"])
    assert str(cached) in emb.description


def test_vgg_download_never_unpickles_code(monkeypatch, tmp_path):
    """torchvision's get_state_dict loads the download with weights_only=False: mcir calls
    torch.hub itself, with weights_only=True and the sha256 check (nothing downloads here)."""
    from torchvision.models import VGG16_Weights

    feats = _vgg16_features_state_dict(2)
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return {f"features.{k}": v for k, v in feats.items()}

    def refuse(*args, **kwargs):
        raise AssertionError("torchvision's get_state_dict (weights_only=False) was called")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    monkeypatch.setattr(VGG16_Weights, "get_state_dict", refuse)
    emb = VGGEmbedding("vgg16")
    assert torch.equal(emb.features[5].weight, feats["5.weight"])
    [(url, kwargs)] = calls
    assert url == VGG16_Weights.IMAGENET1K_V1.url and url.endswith("/vgg16-397923af.pth")
    assert kwargs["weights_only"] is True and kwargs["check_hash"] is True
    assert Path(kwargs["model_dir"]) / kwargs["file_name"] == tmp_path / "checkpoints" / "vgg16-397923af.pth"
    assert "downloaded to" in emb.description


def test_make_embedding_pixel_and_unknown():
    emb = make_embedding("pixel")
    x = torch.rand(1, 3, 4, 4)
    assert emb(x)[0] is x and emb.layer_weights == [1.0] and emb.description
    with pytest.raises(McirError):
        make_embedding("resnet")


def test_pretrained_vgg_offline_is_one_line_and_nothing_else_on_stderr(tmp_path, capfd, monkeypatch):
    """With an empty torch.hub cache and no network, the error is mcir's one line naming
    where the file goes; torch.hub's own "Downloading: ..." line reaches neither stdout (where
a piped table would carry it) nor stderr."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(McirError) as err:
            VGGEmbedding("vgg16")
    finally:
        torch.hub.set_dir(before)
    msg = str(err.value)
    assert "not available" in msg and str(tmp_path / "hub" / "checkpoints" / vgg_weight_file_name("vgg16")) in msg
    assert "\n" not in msg
    assert capfd.readouterr() == ("", "")
