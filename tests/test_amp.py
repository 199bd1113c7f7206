"""Mixed precision's fp16 path, run on a CPU: autocast in float16 and one GradScaler per
optimizer, as on CUDA (emulated and slow, but the same code). Every script trains under it,
a step whose gradients overflow is skipped and lowers the scale, the gradient penalties are
computed on unscaled gradients, and a resumed run continues with the scale it had."""

import json
import os

import pytest
import torch

from conftest import SCRIPTS, load_script, tiny_args


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_trains_under_fp16(name, in_tmp, capsys):
    """Finite losses, and the GradScalers' state in the checkpoint; for two scripts (the
    restore is common/run.py's, the same for all) a resume brings back the scale."""
    m = load_script(name)
    flags = [*tiny_args(m), "--amp", "fp16", "--out", "run"]
    m.main([*flags, "--steps", "2"])
    assert "warning: --amp fp16 on a CPU is emulated" in capsys.readouterr().err
    rows = [json.loads(line) for line in open(os.path.join("run", "metrics.jsonl"))]
    assert rows and all(
        v == v and abs(v) != float("inf") for r in rows for v in r.values() if isinstance(v, float)
    )
    assert json.load(open(os.path.join("run", "args.json")))["amp"] == "fp16"
    path = os.path.join("run", "checkpoints", "last.pt")
    ckpt = torch.load(path, weights_only=True)
    scalers = [k for k, v in ckpt.items() if isinstance(v, dict) and "scale" in v]
    assert scalers, "no GradScaler state in the checkpoint"
    if name not in ("dcgan", "stylegan2"):
        return
    for k in scalers:  # a scale a fresh scaler would not have: resume must bring it back
        ckpt[k]["scale"] = 1024.0
    torch.save(ckpt, path)
    m.main([*tiny_args(m), "--amp", "fp16", "--steps", "3", "--resume", "run"])
    after = torch.load(path, weights_only=True)
    assert after["step"] == 3
    for k in scalers:  # 1024, or 512 if this step overflowed; never the fresh 65536
        assert after[k]["scale"] in (1024.0, 512.0), (k, after[k]["scale"])


def test_a_step_with_inf_gradients_is_skipped_and_lowers_the_scale():
    m = load_script("dcgan")  # optimizer_step is a shared section: the same in every script
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    scaler = m.make_scaler(torch.device("cpu"), "fp16")
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.full((2, 3), 1e38)  # x * w overflows to inf, and so do the gradients
    m.optimizer_step(net(x).sum() * 1e38, opt, scaler, net, world=1)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # skipped
    assert scaler.get_scale() == 2.0**15  # backed off from 2^16
    m.optimizer_step(net(torch.ones(2, 3)).sum(), opt, scaler, net, world=1)
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # stepped


def penalties():
    """(script, name, fn(scale) -> penalty): every gradient penalty that takes fp16's loss
    scale and must return the same value as without it."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    w = torch.randn(1, 1, 8, 8)

    def scores(x):
        return (torch.tanh(x) * w).flatten(1).sum(1)

    out = []
    for name in ("wgan_gp", "dragan", "progan"):
        gp = load_script(name).gradient_penalty
        out.append((name, "gradient_penalty", lambda s, gp=gp: gp(scores(x), x, s)))
    sg = load_script("stylegan2")
    out.append(("stylegan2", "r1_penalty", lambda s: sg.r1_penalty(scores(x), x, s)))
    ws = torch.randn(4, 3, 8, requires_grad=True)
    img = torch.einsum("bij,bj->bi", torch.randn(4, 16, 8), ws[:, 0]).view(4, 1, 4, 4)

    def lengths(s):
        torch.manual_seed(1)  # the same random projection y for both
        return sg.path_lengths(img, ws, s)

    out.append(("stylegan2", "path_lengths", lengths))
    return out


@pytest.mark.parametrize(
    "script,fn", [(s, f) for s, _, f in penalties()], ids=[f"{s}.{n}" for s, n, _ in penalties()]
)
def test_penalties_are_computed_on_unscaled_gradients(script, fn):
    plain, scaled = fn(1.0), fn(torch.tensor(2.0**16))
    assert torch.allclose(plain.float(), scaled.float(), rtol=1e-4), script


def test_path_length_mean_survives_a_skipped_fp16_step():
    """stylegan2: lengths made inf by an overflowing loss scale leave a (the running mean)
    as it was, so the next steps are not NaN."""
    m = load_script("stylegan2")
    pl_mean = torch.tensor(2.0)
    _, kept = m.path_length_penalty(torch.tensor([float("inf"), 1.0]), pl_mean, 0.01, world=1)
    assert kept == 2.0
    _, moved = m.path_length_penalty(torch.tensor([1.0, 1.0]), pl_mean, 0.01, world=1)
    assert moved == pytest.approx(2.0 - 0.01)


def test_cuda_habits_only_on_cuda():
    """TF32 and cuDNN's autotuner are set for CUDA runs (off with --no-tf32; stylegan2's
    default, as the official code), and a CPU run leaves torch's flags alone."""
    from common.run import cuda_habits

    b = torch.backends
    saved = (b.cudnn.benchmark, b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    try:
        b.cudnn.benchmark = b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
        cuda_habits(torch.device("cpu"), True)
        assert not (b.cudnn.benchmark or b.cuda.matmul.allow_tf32 or b.cudnn.allow_tf32)
        cuda_habits(torch.device("cuda"), True)
        assert b.cudnn.benchmark and b.cuda.matmul.allow_tf32 and b.cudnn.allow_tf32
        cuda_habits(torch.device("cuda"), False)
        assert b.cudnn.benchmark and not (b.cuda.matmul.allow_tf32 or b.cudnn.allow_tf32)
    finally:
        b.cudnn.benchmark, b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved
    assert load_script("dcgan").parse_args([]).tf32 is True
    assert load_script("stylegan2").parse_args([]).tf32 is False
