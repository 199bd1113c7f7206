"""The valid range of every numeric flag of every script, checked in one place.

``check_ranges(script, args)`` runs before anything else (training and ``--sample``), so an
out-of-range value ends in one line instead of a traceback from deep inside torch (a
negative learning rate in the optimizer, a negative size in ``torch.randn``) or a run that
silently does something else. A script's ``check_args`` keeps only what depends on several
flags at once (a power-of-two image size, a batch that fills the minibatch-stddev group).

The test suite (tests/test_flags.py) fails when a script has a numeric flag that has no
rule here, and feeds every script a value just outside every rule.
"""

import math

from common import UserError

INF = math.inf

# flag -> interval: [a, b] closed, (a, b) open; inf for no bound. "script.flag" is the rule
# for one script where the same name means something else there.
RANGES = {
    # common (the same in every script)
    "batch_size": "[1, inf)",
    "steps": "[1, inf)",
    "lr_g": "(0, inf)",
    "lr_d": "(0, inf)",
    "z_dim": "[1, inf)",
    "seed": "[0, 2147483647]",
    "image_size": "[4, inf)",
    "color_jitter": "[0, 1]",
    "ema_decay": "[0, 1)",
    "log_every": "[1, inf)",
    "sample_every": "[1, inf)",
    "ckpt_every": "[1, inf)",
    "eval_every": "[0, inf)",
    "eval_samples": "[10, inf)",
    "num_workers": "[0, inf)",
    "sample": "[0, inf)",
    "temperature": "(0, inf)",
    "interpolate": "[0, inf)",
    # widths and Adam, in most scripts
    "g_width": "[1, inf)",
    "d_width": "[1, inf)",
    "beta1": "[0, 1)",
    "beta2": "[0, 1)",
    # began.py
    "gamma": "(0, 1]",
    "lambda_k": "[0, inf)",
    "lr_decay_patience": "[0, inf)",
    "n_filters": "[1, inf)",
    "nh": "[1, inf)",
    # bgan.py
    "n_mc_samples": "[2, inf)",
    "binarize_threshold": "(0, 1]",
    "d_noise": "[0, inf)",
    "text_blocks": "[1, inf)",
    # dragan.py, progan.py, wgan_gp.py
    "lambda_gp": "[0, inf)",
    "perturb_std": "[0, inf)",
    "gp_target": "(0, inf)",
    # ebgan.py
    "margin": "(0, inf)",
    "pt_weight": "[0, inf)",
    # lsgan.py: the coding targets are any numbers (check_args refuses a == b and c == a)
    "a": "(-inf, inf)",
    "b": "(-inf, inf)",
    "c": "(-inf, inf)",
    # progan.py: --steps 0 runs to the end of the growing schedule
    "progan.steps": "[0, inf)",
    "fmap_base": "[1, inf)",
    "fmap_max": "[1, inf)",
    "mbstd_group": "[0, inf)",
    "fade_kimg": "[0, inf)",
    "stable_kimg": "[0, inf)",
    "eps_drift": "[0, inf)",
    # sagan.py
    "shared_dim": "[0, inf)",
    "attention_res": "[0, inf)",
    "attention_query": "[0, inf)",
    # stylegan2.py
    "w_dim": "[1, inf)",
    "mapping_layers": "[1, inf)",
    "mapping_lr_mul": "(0, inf)",
    "channel_base": "[1, inf)",
    "channel_max": "[1, inf)",
    "stylegan2.mbstd_group": "[1, inf)",
    "style_mixing": "[0, 1]",
    "r1_gamma": "[0, inf)",
    "r1_every": "[1, inf)",
    "pl_weight": "[0, inf)",
    "pl_every": "[1, inf)",
    "pl_batch_shrink": "[1, inf)",
    "pl_decay": "[0, 1]",
    "ema_kimg": "(0, inf)",
    "ema_rampup": "[0, inf)",
    "fp16_res": "[0, inf)",
    "conv_clamp": "[0, inf)",
    "truncation": "[0, 1]",
    "mixing_grid": "[0, inf)",
    "mixing_cutoff": "[1, inf)",
    # bgan.py and wgan_gp.py with --dataset text
    "seq_len": "[2, inf)",
    "vocab_size": "[2, inf)",
    # wgan.py, wgan_gp.py
    "n_critic": "[1, inf)",
    "n_critic_boost": "[0, inf)",
    "mixtures": "[1, inf)",
    "clip": "(0, inf)",
    "lr_decay": "[0, inf)",
}


def interval(rule):
    """ "[a, b)" -> (a, b, a included, b included)."""
    lo, hi = (float(s) for s in rule[1:-1].split(","))
    return lo, hi, rule[0] == "[", rule[-1] == "]"


def rule_for(script, dest):
    return RANGES.get(f"{script}.{dest}", RANGES.get(dest))


def describe(rule):
    lo, hi, lo_in, hi_in = interval(rule)
    if hi == INF and lo == -INF:
        return "a finite number"
    if hi == INF:
        return f"at least {lo:g}" if lo_in else f"greater than {lo:g}"
    return f"in {rule}"


def in_range(value, rule):
    lo, hi, lo_in, hi_in = interval(rule)
    if not math.isfinite(value):
        return False
    return (lo <= value if lo_in else lo < value) and (value <= hi if hi_in else value < hi)


def check_ranges(script, args):
    """One line for the first numeric flag outside its range (None means the flag's own
    default: unset)."""
    for dest, value in sorted(vars(args).items()):
        rule = rule_for(script, dest)
        if rule is None or value is None or isinstance(value, bool):
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (int, float)) and not in_range(v, rule):
                raise UserError(f"--{dest.replace('_', '-')} must be {describe(rule)}, not {v:g}")
