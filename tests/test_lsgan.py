"""LSGAN's own checks: the least-squares losses of Eq. 2 under both codings, G's target
following the coding, Fig. 3's networks (--arch paper), and its bad input."""

import pytest
import torch

from conftest import assert_one_line_error, load_script, tiny_args

m = load_script("lsgan")


def reference(real, fake, a, b, c):
    """Eq. 2 written out: (D's loss, G's loss)."""
    d = 0.5 * sum((r - b) ** 2 for r in real) / len(real) + 0.5 * sum(
        (f - a) ** 2 for f in fake
    ) / len(fake)
    return d, 0.5 * sum((f - c) ** 2 for f in fake) / len(fake)


@pytest.mark.parametrize(
    "flags, abc",
    [
        ([], (0, 1, 1)),
        (["--coding", "pearson"], (-1, 1, 0)),
        (["--coding", "pearson", "--c", "1"], (-1, 1, 1)),
        (["--a", "-2", "--b", "2"], (-2, 2, 1)),
    ],
)
def test_codings_and_loss_values(flags, abc):
    args = m.parse_args(flags)
    assert m.coding(args) == abc
    a, b, c = abc
    real, fake = [1.0, 0.5, 3.0], [0.0, -1.0, -10.0]  # raw outputs, far outside [0, 1] too
    want_d, want_g = reference(real, fake, a, b, c)
    assert m.d_loss(torch.tensor(real), torch.tensor(fake), a, b).item() == pytest.approx(want_d)
    assert m.g_loss(torch.tensor(fake), c).item() == pytest.approx(want_g)


def test_known_values_and_no_saturation():
    real, fake = torch.tensor([1.0, 0.5]), torch.tensor([0.0, -1.0])
    assert m.d_loss(real, fake).item() == pytest.approx(0.3125)  # binary: 1/2 * 0.125 + 1/2 * 0.5
    assert m.g_loss(fake).item() == pytest.approx(1.25)  # c = 1: 1/2 * (1 + 4) / 2
    assert m.d_loss(real, fake, -1.0, 1.0).item() == pytest.approx(0.3125)
    assert m.g_loss(fake, 0.0).item() == pytest.approx(0.25)
    # A fake far on the "real" side of the boundary still gets a gradient proportional to its
    # distance from c (no sigmoid): d/dx 1/2 (x - c)^2 = x - c.
    x = torch.tensor([-10.0, 5.0], requires_grad=True)
    m.g_loss(x, 1.0).backward()
    assert torch.allclose(x.grad, torch.tensor([-11.0, 4.0]) / 2)


def test_training_uses_the_coding(in_tmp, monkeypatch):
    """train() hands a and b to D's loss and c to G's loss, as the coding says."""
    seen = {}
    d_loss, g_loss = m.d_loss, m.g_loss

    def spy_d(real, fake, a, b):
        seen["ab"] = (a, b)
        return d_loss(real, fake, a, b)

    def spy_g(fake, c):
        seen["c"] = c
        return g_loss(fake, c)

    monkeypatch.setattr(m, "d_loss", spy_d)
    monkeypatch.setattr(m, "g_loss", spy_g)
    m.main([*tiny_args(m), "--steps", "1", "--coding", "pearson", "--out", "p"])
    assert seen == {"ab": (-1.0, 1.0), "c": 0.0}


@pytest.mark.parametrize("size", [32, 48, 112])
def test_paper_architecture(size):
    args = m.parse_args(
        ["--arch", "paper", "--image-size", str(size), "--g-width", "8", "--d-width", "8"]
    )
    G, D = m.build_models(args, channels=3, num_classes=0)
    x = G(torch.randn(2, args.z_dim))
    assert x.shape == (2, 3, size, size) and D(x).shape == (2,)
    deconvs = [m for m in G.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.kernel_size for m in deconvs] == [(3, 3)] * 7
    assert [m.stride[0] for m in deconvs] == [2, 1, 2, 1, 2, 2, 1]
    # 4w, 4w, 4w, 4w, 2w, w (Fig. 3a), then the image
    assert [m.out_channels for m in deconvs] == [32, 32, 32, 32, 16, 8, 3]
    convs = [m for m in D.net if isinstance(m, torch.nn.Conv2d)]
    assert [m.kernel_size for m in convs] == [(5, 5)] * 4
    assert [m.out_channels for m in convs] == [8, 16, 32, 64]
    assert args.z_dim == 1024 and not isinstance(D.net[1], torch.nn.BatchNorm2d)


def test_paper_arch_trains_and_samples(in_tmp):
    m.main([*tiny_args(m), "--arch", "paper", "--conditional", "--steps", "2", "--out", "run"])
    generate = m.load_generator("run/checkpoints/last.pt")
    assert isinstance(generate.model, m.PaperGenerator)
    assert generate(4, labels=torch.tensor([0, 1, 2, 3])).shape == (4, 1, 16, 16)


def test_paper_defaults():
    a = m.parse_args([])
    assert (a.batch_size, a.lr_g, a.lr_d, a.beta1, a.z_dim, a.coding, a.arch) == (
        64,
        1e-3,
        1e-3,
        0.5,
        1024,
        "binary",
        "dcgan",
    )


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--b", "0"], "a != b"),
        (["--coding", "pearson", "--c", "-1"], "c != a"),
        (["--arch", "paper", "--image-size", "40"], "--image-size"),
        (["--image-size", "48"], "--image-size"),
    ],
)
def test_bad_input(flags, words, in_tmp, capsys):
    assert_one_line_error(m, flags, words, capsys)
