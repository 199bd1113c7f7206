"""EBGAN-specific checks: the energy, the margin hinge per sample, the pulling-away term
(hand-made values, i != j left out, encoder embedding, G's loss only) and its bad input."""

import pytest
import torch

from conftest import assert_one_line_error, load_script, tiny_args

m = load_script("ebgan")


def test_energy_is_the_l2_norm_of_the_reconstruction_error():
    x = torch.zeros(2, 1, 2, 2)
    r = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 3.0)])
    assert torch.allclose(m.energy(x, r), torch.tensor([2.0, 6.0]))  # sqrt(4 * 1), sqrt(4 * 9)


def test_margin_hinge_is_per_sample():
    real = (torch.tensor([1.0, 3.0]), None)
    fake = (torch.tensor([5.0, 15.0]), None)  # batch mean 10: a hinge on the mean would be 0
    assert m.d_loss(real, fake, margin=10.0).item() == pytest.approx(2.0 + (5.0 + 0.0) / 2)
    far = (torch.tensor([12.0, 20.0]), None)  # both beyond the margin: no hinge term
    assert m.d_loss(real, far, margin=10.0).item() == pytest.approx(2.0)


def test_pulling_away_term_hand_made():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # squared cosines: (1,2) 0, (1,3) 1/2, (2,3) 1/2; both orders over N(N-1) = 6 pairs
    assert m.pulling_away(s).item() == pytest.approx(2 * (0 + 0.5 + 0.5) / 6)
    scaled = s * torch.tensor([[2.0], [3.0], [0.5]])
    assert m.pulling_away(scaled).item() == pytest.approx(1 / 3)  # cosine: scale-free
    opposite = torch.tensor([[1.0, 2.0], [-2.0, -4.0]])
    assert m.pulling_away(opposite).item() == pytest.approx(1.0)  # squared: -1 counts as 1


def test_pulling_away_term_leaves_out_i_equals_j():
    assert m.pulling_away(torch.eye(4)).item() == 0.0  # with i = j it would be 4 / 12
    assert m.pulling_away(torch.eye(4).view(4, 1, 2, 2)).item() == 0.0  # feature maps are flattened


def test_pt_uses_the_encoder_embedding_and_goes_in_g_loss_only():
    args = m.parse_args(m.SMOKE_ARGS)
    G, D = m.build_models(args, channels=1, num_classes=0)
    x = G(torch.randn(5, args.z_dim))
    e, s = D(x)
    assert torch.equal(s, D.encoder(x).flatten(1)) and e.shape == (5,)
    assert torch.allclose(m.g_loss((e, s), pt_weight=0.3), e.mean() + 0.3 * m.pulling_away(s))
    assert torch.equal(m.g_loss((e, s), pt_weight=0.0), e.mean())
    s_leaf = s.detach().requires_grad_(True)
    fake = (e.detach().requires_grad_(True), s_leaf)
    m.d_loss((e.detach(), s_leaf), fake, margin=10.0).backward()
    assert s_leaf.grad is None  # D's loss never sees the embedding
    m.g_loss((e.detach(), s_leaf), pt_weight=0.1).backward()
    assert s_leaf.grad is not None and s_leaf.grad.abs().sum() > 0


def test_paper_defaults():
    a = m.parse_args(["--config", "paper"])
    assert (a.margin, a.pt_weight, a.lr_g, a.lr_d, a.beta1, a.z_dim) == (
        10.0,
        0.1,
        1e-3,
        1e-3,
        0.5,
        100,
    )


@pytest.mark.parametrize(
    "argv, margin",
    [
        ([], 6),  # the digits train at 16x16
        (["--image-size", "32"], 11),
        (["--image-size", "64"], 23),  # the appendix: 20
        (["--image-size", "64", "--margin", "20"], 20),  # a given margin wins
        (["--config", "paper", "--image-size", "64"], 10),
    ],
)
def test_auto_margin_scales_with_the_side(argv, margin):
    """--config auto: MNIST's margin 10 (at 28x28) x the image size / 28, rounded."""
    assert m.parse_args(argv).margin == margin


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--batch-size", "1"], "--batch-size 1"),
        (["--margin", "0"], "--margin"),
        (["--margin", "-5"], "--margin"),
        (["--pt-weight", "-0.1"], "--pt-weight"),
    ],
)
def test_bad_input_one_line(flags, words, in_tmp, capsys):
    assert_one_line_error(m, flags, words, capsys)


def test_batch_of_one_trains_without_pt(in_tmp):
    res = m.main(
        [*tiny_args(m), "--batch-size", "1", "--pt-weight", "0", "--steps", "2", "--out", "one"]
    )
    assert res["out"] == "one"


def test_overflowing_learning_rate_is_one_line(in_tmp, capsys):
    """lr / (1 - beta1) beyond float32: Adam would raise mid-step; it is refused up front."""
    assert_one_line_error(m, ["--lr-g", "1e38", "--beta1", "0.9"], ("--lr-g", "NaN"), capsys)
