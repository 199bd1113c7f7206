"""Run a paper script under torchrun and save this rank's parameters for comparison.

    torchrun --nproc_per_node=2 tests/ddp_driver.py dcgan [script flags...] --out DIR

Writes DIR/params_rank<r>.pt: every parameter of every model ``train`` returns.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import load_script  # noqa: E402

name, argv = sys.argv[1], sys.argv[2:]
result = load_script(name).main(argv)
params = {
    f"{k}.{n}": p.detach().cpu().clone()
    for k, mod in result.items()
    if isinstance(mod, torch.nn.Module)
    for n, p in mod.named_parameters()
}
torch.save(
    params, os.path.join(argv[argv.index("--out") + 1], f"params_rank{os.environ['RANK']}.pt")
)
