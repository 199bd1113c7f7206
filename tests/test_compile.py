"""--compile on a CPU (torch.compile with inductor, which needs a C++ compiler) for one
script of each kind: a plain GAN (dcgan.py: G and D compiled), one with a gradient
penalty's double backward (wgan_gp.py: G compiled, the critic eager, as compile has no
double backward), and stylegan2.py (R1 and path length: it says so in one line and trains
eagerly). Slow (minutes of compilation), so opt-in: GAN_ZOO_COMPILE=1 python -m pytest
tests/test_compile.py."""

import json
import os

import pytest

from conftest import load_script, tiny_args

pytestmark = pytest.mark.skipif(
    os.environ.get("GAN_ZOO_COMPILE") != "1",
    reason="slow: set GAN_ZOO_COMPILE=1 to run the compile tests",
)


@pytest.mark.parametrize("name", ["dcgan", "wgan_gp", "stylegan2"])
def test_compile_trains(name, in_tmp, capsys):
    m = load_script(name)
    m.main([*tiny_args(m), "--compile", "--amp", "off", "--steps", "2", "--out", "run"])
    rows = [json.loads(line) for line in open(os.path.join("run", "metrics.jsonl"))]
    assert rows[-1]["step"] == 2
    assert all(v == v for r in rows for v in r.values() if isinstance(v, float))
    err = capsys.readouterr().err
    if name == "stylegan2":
        assert "--compile ignored: R1 and path length need double backward" in err
    if name == "wgan_gp":
        assert "--compile compiles G only" in err
