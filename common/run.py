"""Run management, once for every paper script: everything about a training run that is no
paper's business.

A script's ``train()`` creates one ``Run`` and hands it what the paper defines:

    run = Run(SCRIPT, args, rank, world, device, check_args)   # resume: the run's flags
    data = run.dataset()                                       # download, load
    batches = run.batches(data)
    ... models, optimizers, scalers, EMA ...
    run.start({"G": G, "D": D, "ema": ema, "opt_g": opt_g, ...}, grid=(grid_z,))
    while run.step < args.steps:
        ... the paper's update steps ...
        run.end_step(d_loss=loss_d, g_loss=loss_g)
    return run.finish()

and the run does the rest: the run directory and ``args.json``; resume (the checkpoint,
flags given now over the stored ones, every object of the state restored, RNG states of
every rank); checkpoint files (durable, numbered copies, the NaN guard that names the last
good checkpoint); metrics summed on the device with one host sync per ``--log-every``;
the progress bar; sample grids and ``progress.gif``; ``--eval-every`` and ``best.pt``;
TensorBoard; curves; and stopping: SIGINT (Ctrl-C), SIGTERM or SIGUSR1 end the run at a
step boundary with a checkpoint of that step. ``main`` and ``sample`` are the command
line's other half: flag ranges, one-line errors, the stop line, ``--sample``/``--interpolate``.
"""

import argparse
import contextlib
import copy
import errno
import json
import math
import os
import shutil
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn as nn

from common import UserError
from common.kinds import Images, kind_of
from common.checkpoints import (  # noqa: F401 - find_checkpoint, read_metrics: for the tools
    find_checkpoint,
    last_good,
    load_checkpoint,
    load_state,
    new_run_dir,
    plain_args,
    read_metrics,
    remove_stale,
    rng_state,
    run_dir_of,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_args,
)

STOP_SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, n)]


def all_ranks_mean(t, world):
    """Average a tensor over the ranks, in place (a collective)."""
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t


def gather_ranks(world, mine):
    """Every rank's ``mine``, in rank order (a collective: call on all ranks)."""
    if world == 1:
        return [mine]
    states = [None] * world
    dist.all_gather_object(states, mine)
    return states


class Stopped(Exception):
    """A run stopped by a signal at a step boundary, its checkpoint written."""

    def __init__(self, signum, step, out, rank):
        super().__init__(f"stopped at step {step}")
        self.signum, self.step, self.out, self.rank = signum, step, out, rank


@torch.no_grad()
def recalibrate_batchnorm(model, batches):
    """Recompute batch-norm running statistics for an EMA generator's averaged weights.

    Statistics copied from the raw generator belong to its weights, not the averaged ones;
    running the EMA generator in train mode on fixed latents with a cumulative average
    (momentum None) gives statistics that match. ``batches`` are tuples of G's inputs.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for inputs in batches:
        model(*inputs)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


@contextlib.contextmanager
def private_rng(device, seed):
    """Run on a fork of the RNG seeded with ``seed`` and give the caller's back afterwards: G's
    own noise (a dmol head, StyleGAN2's noise inputs) is then reproducible in grids, batch-norm
    calibration and sampling, and never moves the training trajectory."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def fixed_inputs(n, z_dim, num_classes, seed, device, latent=torch.randn):
    """n latents (and labels, a row of n / num_classes per class) from a private generator,
    so drawing them never moves the training RNG: for the grids, or the latents that
    recalibrate an EMA generator's batch norm."""
    z = latent(n, z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    if not num_classes:
        return z, None
    return z, torch.arange(n).remainder(num_classes).sort().values.to(device)


def native_bf16(device):
    """Whether ``device`` computes bf16 in hardware: CUDA that supports it, or a CPU with
    AVX-512 BF16 or AMX. Elsewhere bf16 is emulated and usually slower than fp32
    (docs/results.md, Speed)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # another torch: the kernel's CPU flags
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp, device, rank=0):
    """``--amp auto`` -> bf16 where the hardware has it, else off; an explicit bf16 on a CPU
    that emulates it, or fp16 on any CPU (autocast and GradScaler run there, slowly), runs
    with one warning line."""
    if amp == "auto":
        return "bf16" if native_bf16(device) else "off"
    if amp == "bf16" and device.type == "cpu" and rank == 0 and not native_bf16(device):
        print(
            "warning: --amp bf16 is emulated on this CPU (no AVX-512 BF16 or AMX) and can be "
            "much slower than --amp off",
            file=sys.stderr,
        )
    if amp == "fp16" and device.type == "cpu" and rank == 0:
        print(
            "warning: --amp fp16 on a CPU is emulated and slow: it is there to check the "
            "GradScaler path; train with --amp bf16 or off",
            file=sys.stderr,
        )
    return amp


def cuda_habits(device, tf32):
    """On CUDA: cuDNN picks the fastest convolution algorithms for the (fixed) shapes, and
    matmuls and convolutions run in TF32 unless --no-tf32 (a script whose paper's numerics
    need full fp32 sets that default). Nothing changes on a CPU."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32


class Run:
    """One training run of one script (see the module docstring for the protocol).

    ``step`` counts generator updates; ``out`` is the run directory (on every rank);
    ``resumed`` is the checkpoint a run continues from (None for a new run), for the
    paper state a script keeps outside the objects it hands to ``start``.
    """

    active = None  # the run whose signal handlers are installed, for ``main``

    def __init__(self, script, args, rank, world, device, check=None):
        self.script, self.args, self.device = script, args, device
        self.rank, self.world = rank, world
        self.resumed, self.restart = None, False
        last = os.path.join(args.out or "", "checkpoints", "last.pt")
        if args.resume == "auto" and args.out and not os.path.isfile(last):
            # A requeued job whose first lap was stopped before its first checkpoint: start it.
            if (
                os.path.isdir(args.out)
                and os.listdir(args.out)
                and not os.path.isfile(os.path.join(args.out, "args.json"))
            ):
                raise UserError(
                    f"--resume auto: {args.out!r} has no checkpoint and is not a run "
                    "directory; choose another --out"
                )
            self.restart, args.resume = True, None
            if rank == 0:
                print(
                    f"warning: --resume auto: {args.out} has no checkpoint yet; starting the "
                    "run at step 0",
                    file=sys.stderr,
                )
        if args.resume:
            path = find_checkpoint(script, args.resume, args.out)
            self.resumed = load_checkpoint(path, script, "cpu")
            for k, v in self.resumed["args"].items():  # the run's flags, but those given now
                if k not in args.explicit and k not in ("resume", "explicit"):
                    setattr(args, k, v)
            args.out = run_dir_of(path)
        args.amp = resolve_amp(args.amp, device, rank)  # args.json records what ran
        cuda_habits(device, args.tf32)
        if check is not None:
            check(args)
        self.step, self.out, self.data, self.metrics, self.pbar = 0, args.out, None, None, None
        self.saved_step, self.signum, self.agreed = -1, None, False

    # ------------------------------------------------------------------ data
    def dataset(self, labels=False, load=None):
        """The dataset the shared flags name (downloaded first on rank 0 with --download), or
        ``load(args, resumed)``'s: the script's own data (text, a quantized folder), which
        brings its kind like any dataset (``common.kinds``). ``labels``: a conditional
        model's, which needs classes. ``resumed`` is the checkpoint a run continues from."""
        from common.data import download_dataset, load_dataset

        a = self.args
        if load is not None:
            self.data = load(a, self.resumed)
            return self.data
        if a.download:
            if self.rank == 0:
                download_dataset(a.dataset, a.data_path)
            if self.world > 1:
                dist.barrier()
        self.data = load_dataset(a.dataset, a.data_path, a.image_size, a.channels)
        if labels and not self.data.num_classes:
            raise UserError(
                f"--conditional needs labelled data, and {a.dataset} has no classes "
                "(use class sub-folders)"
            )
        return self.data

    def batches(self, data, batch_size=None):
        """This rank's endless, resumable stream of batches, as the data makes it
        (``data.stream``: ``common.data.Batches`` of images, ``common.text.TextBatches``)."""
        a = self.args
        return data.stream(batch_size or a.batch_size, self.device, self.rank, self.world, a)

    def models(self, build, *inputs, memory_format=torch.channels_last):
        """``build(args, *inputs)`` -> (G, D): seeded alike on every rank and moved to the
        device; returns G, D and G's EMA copy (None with --ema-decay 0)."""
        torch.manual_seed(self.args.seed)
        G, D = (m.to(self.device, memory_format=memory_format) for m in build(self.args, *inputs))
        ema = None if self.args.ema_decay == 0 else copy.deepcopy(G).eval().requires_grad_(False)
        return G, D, ema

    # ------------------------------------------------------------------ start
    def start(self, state, grid, calibrate=None, info=None, note="", total=None):
        """Restore or seed, create the run directory, and begin; returns the step.

        ``state``: name -> what goes into every checkpoint: modules (``G``, ``D``, ``ema``,
        which may be None), optimizers, scalers, the batch stream, and the paper's state
        (an object with ``state_dict`` and ``load_state_dict``, e.g. BEGAN's equilibrium). On
        resume each is restored; optimizers keep the learning rate they were built with (a
        flag given now wins).
        ``grid``: G's inputs for the sample grids, or a function ``grid(generator)``.
        ``calibrate``: input tuples that recompute the EMA generator's batch-norm statistics
        before it is used. ``info``: plain values for ``load_generator`` (channels, ...).
        ``note``: paper settings for the first line. ``total``: steps (default ``--steps``).
        """
        self.state, self.grid, self.calibrate = state, grid, calibrate
        self.info = dict(info or {})
        if self.data is not None:  # what the kind of samples needs later (a vocabulary, ...)
            self.info.update(self.data.kind.state())
        self.kind = kind_of(self.info)
        self.total = total or self.args.steps
        if self.total < 1:
            raise UserError("--steps must be at least 1")
        for m in state.values():  # every rank starts from rank 0's weights
            if isinstance(m, nn.Module) and self.world > 1:
                for t in list(m.parameters()) + list(m.buffers()):
                    dist.broadcast(t.data, 0)
        ckpt = self.resumed
        if ckpt is None:
            seed_everything(self.args.seed + self.rank)
        else:
            self._restore(ckpt)
        if self.rank == 0:
            if ckpt is not None:
                remove_stale(self.args.out)
            self.out = self.args.out = (
                self.args.out
                if ckpt is not None
                else new_run_dir(self.script, self.args.out, self.restart)
            )
            # args.json holds what ran: the device, and the data's channels where not given.
            self.args.device = str(self.device)
            if self.args.channels is None and getattr(self.data, "channels", None):
                self.args.channels = self.data.channels
            write_args(self.out, self.args)
            a = self.args
            since = None  # the step whose later lines metrics.jsonl drops (None: keep all)
            if ckpt:
                since = self.step
            elif self.restart:
                since = 0
            self.metrics = Metrics(
                self.out,
                resume_step=since,
                tensorboard=a.tensorboard,
                evaluate_dataset=a.dataset if a.eval_every else None,
                best_metric=self.kind.best_metric,
            )
            if a.config == "auto" and (a.auto or {}).get("device") == "cpu":
                print(
                    f"{self.script}: --config auto on a CPU is a run of minutes, sized to the "
                    f"embedded digits; `python {self.script}.py --dry-run --assume cuda` shows "
                    "the full schedule (--config paper, or those flags, trains it here)",
                    flush=True,
                )
            print(self._banner(note), flush=True)
        from tqdm import tqdm

        self.pbar = tqdm(
            total=self.total,
            initial=self.step,
            disable=self.rank != 0,
            dynamic_ncols=True,
            desc=self.script,
        )
        self.acc, self.n_acc, self.n_img, self.t_log = None, 0, 0, time.perf_counter()
        logs = (ckpt or {}).get("log")
        if logs and len(logs) == self.world and logs[self.rank]["n"]:  # a log interval's start
            self.acc, self.n_acc = logs[self.rank]["acc"].to(self.device), logs[self.rank]["n"]
        self.catch_signals()
        return self.step

    # ------------------------------------------------------------------ signals
    def catch_signals(self):
        """From here on SIGINT (Ctrl-C), SIGTERM and SIGUSR1 stop the run at the end of the
        step (under torchrun: of the next --log-every step, where the ranks agree anyway);
        a second Ctrl-C stops at once."""
        self.signum, self.t_signal, self.noted, self.agreed = None, 0.0, False, False
        self.handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup/&: stay deaf to it
                    self.handlers[sig] = signal.signal(sig, self.on_signal)
        Run.active = self

    def on_signal(self, signum, frame):
        if self.signum is None:
            self.signum, self.t_signal = signum, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self.t_signal > 1:
            raise KeyboardInterrupt  # the second Ctrl-C (torchrun forwards the first at once)

    def release_signals(self):
        for sig, handler in getattr(self, "handlers", {}).items():
            signal.signal(sig, handler)
        self.handlers = {}
        if Run.active is self:
            Run.active = None

    def stop(self):
        """Leave at a step boundary with a checkpoint of this step (every rank)."""
        if self.saved_step != self.step:
            self.save()
        self.pbar.close()
        self.release_signals()
        if self.rank == 0:
            self.metrics.close(curves=False)
        raise Stopped(self.signum or signal.SIGTERM, self.step, self.out, self.rank)

    def _restore(self, ckpt):
        # flags the checkpoint does not record: an older script's run, given today's defaults
        internal = {"auto", "chosen", "explicit", "assume", "dry_run", "resume"}
        newer = [
            k
            for k in sorted(vars(self.args))
            if k not in ckpt["args"] and k not in internal and k not in self.args.explicit
        ]
        for name, obj in self.state.items():
            if obj is None or ckpt.get(name) is None:
                continue
            if isinstance(obj, nn.Module):
                load_state(
                    obj,
                    ckpt[name],
                    {"G": "generator", "D": "discriminator", "ema": "EMA generator"}.get(
                        name, name
                    ),
                    newer,
                )
            elif isinstance(obj, torch.optim.Optimizer):
                lrs = [g["lr"] for g in obj.param_groups]
                obj.load_state_dict(ckpt[name])
                for g, lr in zip(obj.param_groups, lrs):
                    g["lr"] = lr
            else:  # the batch stream, a scaler, paper state (BEGAN's k_t, ...)
                obj.load_state_dict(ckpt[name])
        self.step = ckpt["step"]
        rngs = ckpt["rng"]
        if len(rngs) == self.world:
            set_rng_state(rngs[self.rank])
        else:
            seed_everything(self.args.seed + self.rank + 7919 * self.step)
            print(
                f"warning: resuming with {self.world} processes from a {len(rngs)}-process run;"
                " latents will differ",
                file=sys.stderr,
            )

    def _banner(self, note):
        a, d = self.args, self.data
        params = ", ".join(
            f"{n} {sum(p.numel() for p in self.state[n].parameters()) / 1e6:.2f}M"
            for n in ("G", "D")
            if isinstance(self.state.get(n), nn.Module)
        )
        data = "" if d is None else f"{d.describe()}; "
        return (
            f"{self.script}: {data}batch {a.batch_size} x {self.world} process(es) = "
            f"{a.batch_size * self.world}; {params} params; {note + '; ' if note else ''}"
            f"{self.device}, amp {a.amp}; run dir {self.out}"
        )

    # ------------------------------------------------------------------ each step
    def end_step(self, images=None, **values):
        """The step is done: count it, and log, draw, save and evaluate when it is time.

        ``values``: name -> a scalar tensor (summed on the device, averaged over the log
        interval and the ranks with one host sync) or a number (logged as it is, e.g. the
        resolution). ``images``: real images this step consumed on all ranks (default
        batch size x ranks), for img/s.
        """
        self.step += 1
        tensors = {k: v for k, v in values.items() if torch.is_tensor(v)}
        with torch.no_grad():
            now = torch.stack([v.detach().float().reshape(()) for v in tensors.values()])
            self.acc = now if self.acc is None else self.acc + now
        self.keys, self.plain = list(tensors), {k: v for k, v in values.items() if k not in tensors}
        self.n_acc += 1
        self.n_img += images if images is not None else self.args.batch_size * self.world
        self.pbar.update(1)
        a, step, last = self.args, self.step, self.step == self.total
        if step % a.log_every == 0 or last:
            self._log()
        if self.rank == 0 and (step % a.sample_every == 0 or last):
            self.write_samples()
        if step % a.ckpt_every == 0 or last:
            self.save()
        if a.eval_every and step % a.eval_every == 0:
            if step % a.ckpt_every and not last:
                self.save()  # evaluation scores (and may keep as best.pt) this step's checkpoint
            if self.rank == 0:
                self.metrics.evaluate(
                    step, os.path.join(self.out, "checkpoints", "last.pt"), a.eval_samples
                )
        if self.signum is not None and not self.noted and not last:
            self.noted = True
            self.write(
                f"{signal.Signals(self.signum).name}: stopping at the end of "
                f"{'this step' if self.world == 1 else 'the next --log-every step'}"
            )
        if not last and (self.agreed if self.world > 1 else self.signum is not None):
            self.stop()

    def _log(self):
        acc = self.acc
        if self.world > 1:  # the ranks agree on a stop in the reduction the log does anyway
            acc = torch.cat([acc, acc.new_tensor([float(self.signum is not None)])])
        vals = (all_ranks_mean(acc, self.world) / self.n_acc).tolist()  # the one host sync
        if self.world > 1:
            self.agreed = vals.pop() > 0
        dt = time.perf_counter() - self.t_log
        if not all(map(math.isfinite, vals)):
            self.fail(f"losses became NaN/inf by step {self.step}")
        rec = {
            "step": self.step,
            **dict(zip(self.keys, vals)),
            **self.plain,
            "img_per_s": self.n_img / dt,
            "time": time.time(),
        }
        if self.rank == 0:
            self.metrics.log(**rec)
            shown = {
                k: f"{v:.3g}" if isinstance(v, float) else v
                for k, v in list(rec.items())[1:6]
                if k != "time"
            }
            self.pbar.set_postfix(**shown, img_s=f"{rec['img_per_s']:.0f}")
            self._watch_collapse(rec)
        self.acc, self.n_acc, self.n_img, self.t_log = None, 0, 0, time.perf_counter()

    def _watch_collapse(self, rec):
        """Hand the logged numbers to the run's CollapseWatch (made at the first log); write
        its one warning line, if it has one now."""
        if getattr(self, "collapse", None) is None:
            self.collapse = CollapseWatch()
        warning = self.collapse.update(rec, self.step - self.n_acc, self.out)
        if warning:
            self.write(warning)

    def fail(self, what):
        """Stop a diverged run with one line that names the last good checkpoint."""
        self.pbar.close()
        self.release_signals()
        raise UserError(f"{what}; {last_good(self.out)} (try a lower --lr-d/--lr-g or --amp off)")

    def generator(self):
        """The generator for grids and checkpoints: the EMA one (batch norm recalibrated)
        when there is one, else G."""
        ema = self.state.get("ema")
        if ema is None:
            return self.state["G"]
        with private_rng(self.device, 4321):
            recalibrate_batchnorm(ema, self.calibrate)
        return ema

    @torch.no_grad()
    def images(self, gen):
        """The grid's images from ``gen`` in eval mode, under the run's autocast."""
        was_training = gen.training
        gen.eval()
        amp = self.args.amp
        dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        autocast = torch.autocast(self.device.type, dtype, enabled=amp != "off")
        with private_rng(self.device, 1234), autocast:
            x = self.grid(gen) if callable(self.grid) else gen(*self.grid)
        gen.train(was_training)
        return x

    def write_samples(self):
        """``samples/step_N.png`` and ``progress.gif`` (rank 0), as the kind writes them
        (text: ``step_N.txt``, one sequence per line)."""
        from common.images import progress_gif

        samples = os.path.join(self.out, "samples")
        x = self.kind.decode(self.images(self.generator()))
        row = 8 if self.kind.picture else None  # 8 per row: a row per class when conditional
        path = self.kind.write(x, os.path.join(samples, f"step_{self.step:06d}"), row=row)
        if self.kind.picture:
            self.metrics.image("samples", self.step, path)
            progress_gif(samples, os.path.join(self.out, "progress.gif"))

    def save(self):
        """``checkpoints/last.pt`` and ``step_N.pt`` (a collective: every rank calls it)."""
        acc = None if self.acc is None else self.acc.detach().cpu()
        ranks = gather_ranks(self.world, {"rng": rng_state(), "log": {"acc": acc, "n": self.n_acc}})
        self.saved_step = self.step
        modules = [m for m in self.state.values() if isinstance(m, nn.Module)]
        if not all(torch.isfinite(p).all() for m in modules for p in m.parameters()):
            self.fail(f"the weights became NaN/inf by step {self.step}")
        if self.rank != 0:
            return
        self.generator()  # the EMA generator's batch-norm statistics, recomputed
        ckpt = {
            "script": self.script,
            "step": self.step,
            "args": plain_args(self.args),
            **self.info,
            "rng": [r["rng"] for r in ranks],
            "log": [r["log"] for r in ranks],
        }
        for name, obj in self.state.items():
            ckpt[name] = None if obj is None else obj.state_dict()
        folder = os.path.join(self.out, "checkpoints")
        save_checkpoint(
            os.path.join(folder, "last.pt"),
            ckpt,
            links=[os.path.join(folder, f"step_{self.step:06d}.pt")],
        )

    def write(self, message):
        """A line above the progress bar (rank 0)."""
        if self.rank == 0:
            self.pbar.write(message)

    def finish(self, note=""):
        """Close the bar, the metrics and the curves; a barrier under torchrun. Returns what
        the tests and tools use: the run directory and the models."""
        self.pbar.close()
        self.release_signals()
        if self.rank == 0:
            self.metrics.close()
            print(
                f"done: {self.step} steps{note}; samples in {os.path.join(self.out, 'samples')}, "
                f"checkpoint {os.path.join(self.out, 'checkpoints', 'last.pt')}",
                flush=True,
            )
        if self.world > 1:
            dist.barrier()
        return {"out": self.out, **{k: v for k, v in self.state.items() if k in ("G", "D", "ema")}}


class CollapseWatch:
    """Notices a run whose discriminator has won outright, and says so once.

    When D tells every fake from the real data with certainty, G's loss saturates and G
    has usually collapsed (bgan.py at ten times the authors' lr_g: D(x) 0.999, D(G(z))
    below 1e-6 from step ~3300 on, and G drew stripes). The sign is the logged ``d_fake``,
    the mean D(G(z)) probability of a log interval, below ``floor`` on every log of a
    stretch of at least ``logs`` logs and ``steps`` steps. The watch reads only the numbers
    a log already has (no host sync). ``d_fake`` is taken as a probability while every
    logged ``d_real`` and ``d_fake`` lies in [0, 1]: scores that are none (a WGAN critic's,
    a hinge loss's) leave that range within the first logs and turn the watch off for the
    run. The warning names the last numbered checkpoint (``checkpoints/step_N.pt``) written
    before the stretch began.
    """

    def __init__(self, floor=1e-4, logs=3, steps=100):
        self.floor, self.logs, self.steps = floor, logs, steps
        self.probability, self.warned = True, False
        self.since, self.count = None, 0  # the stretch: the step it began, its logs

    def update(self, rec, since, out):
        """One log's record ``rec`` (``step``, ``d_fake``, maybe ``d_real``), whose interval
        began after step ``since``; returns the warning line once the stretch is long
        enough, else None. ``out``: the run directory whose checkpoints the line names."""
        fake, real = rec.get("d_fake"), rec.get("d_real", 0.5)
        if self.warned or not self.probability or not isinstance(fake, float):
            return None
        if not (0 <= fake <= 1 and 0 <= real <= 1):
            self.probability = False
            return None
        if fake >= self.floor:
            self.since, self.count = None, 0
            return None
        if self.since is None:
            self.since = since
        self.count += 1
        if self.count < self.logs or rec["step"] - self.since < self.steps:
            return None
        self.warned = True
        return (
            f"warning: D has won outright since step {self.since} (mean D(G(z)) below "
            f"{self.floor:g} on every log since): G has likely collapsed; "
            f"{self.checkpoint_before(out)}"
        )

    def checkpoint_before(self, out):
        """Where to resume from: the last numbered checkpoint at or before the stretch."""
        import glob

        steps = []
        for path in glob.glob(os.path.join(out or ".", "checkpoints", "step_*.pt")):
            name = os.path.basename(path)[len("step_") : -len(".pt")]
            if name.isdigit() and int(name) <= self.since:
                steps.append((int(name), path))
        if not steps:
            return "no checkpoint was written before it"
        path = max(steps)[1]
        return (
            f"the last checkpoint before it is {path} (resume from it with --resume {path} "
            "and, e.g., lower learning rates)"
        )


class Metrics:
    """Appends one JSON object per logged step to ``metrics.jsonl``; optionally mirrors the
    numbers and sample grids to TensorBoard (``--tensorboard``), evaluates checkpoints during
    training (``--eval-every``) and draws the curves at the end of the run.

    On resume, lines logged after the checkpoint's step (by a run killed between two
    checkpoints) are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(
        self, out, resume_step=None, tensorboard=False, evaluate_dataset=None, best_metric="fid"
    ):
        self.out, self.path = out, os.path.join(out, "metrics.jsonl")
        if resume_step is not None and os.path.exists(self.path):
            keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard"
                ) from None
            purge = resume_step + 1 if resume_step is not None else None
            self.writer = SummaryWriter(os.path.join(out, "tensorboard"), purge_step=purge)
        self.best_metric = best_metric
        if evaluate_dataset is not None:  # fail now (no weights), not at the first evaluation
            from common.evaluation import prepare

            prepare(evaluate_dataset)
        self.file = open(self.path, "a")

    def log(self, **values):
        self.file.write(json.dumps(values) + "\n")
        self.file.flush()
        if self.writer is not None and "step" in values:
            for k, v in values.items():
                number = isinstance(v, (int, float)) and not isinstance(v, bool)
                if number and k not in ("step", "time"):
                    self.writer.add_scalar(k, v, values["step"])

    def image(self, tag, step, png):
        """Mirror a written grid (a PNG path) to TensorBoard."""
        if self.writer is not None:
            import numpy as np
            from PIL import Image

            image = np.asarray(Image.open(png).convert("RGB"))
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def evaluate(self, step, checkpoint, num_samples):
        """Score a checkpoint with common.evaluation's protocol (the one of tools/evaluate.py)
        on a small sample (digits: the digits classifier; other data: the FID Inception), log
        the numbers as ``eval_*`` and keep the best checkpoint (lowest FID) as
        ``checkpoints/best.pt``. RNG states are restored afterwards, so evaluating never
        changes the training trajectory."""
        import random

        import numpy as np

        from common import evaluation  # only a run that evaluates pays for importing it

        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            res = evaluation.evaluate(
                checkpoint,
                num_samples=num_samples,
                num_real=max(num_samples, 1000),
                metrics=("fid", "kid", "prc"),
                device="auto" if torch.cuda.is_available() else "cpu",
            )
        random.setstate(py)
        np.random.set_state(npy)
        names = (
            "fid",
            "kid",
            "precision",
            "recall",
            "coverage",
            "confidence",
            "within_class_spread",
            "js1",
            "js2",
            "js3",
            "js4",
            "words",
        )
        m = {f"eval_{k}": v for k, v in res["metrics"].items() if k in names}
        best_file = os.path.join(self.out, "checkpoints", "best.json")
        best = json.load(open(best_file)) if os.path.exists(best_file) else None
        key = f"eval_{self.best_metric}"  # the kind's: lower is better
        if best is None or m[key] < best[key]:
            best = {
                "step": step,
                **m,
                "num_samples": num_samples,
                "feature_extractor": res["protocol"]["feature_extractor"]["name"],
            }
            tmp = os.path.join(self.out, "checkpoints", "best.pt.tmp")
            shutil.copyfile(checkpoint, tmp)
            os.replace(tmp, os.path.join(self.out, "checkpoints", "best.pt"))
            with open(best_file, "w") as f:
                json.dump(best, f, indent=2)
        self.log(step=step, **m, eval_best_step=best["step"])
        return m

    def close(self, curves=True):
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if not curves:
            return
        try:
            from common.images import plot_curves

            plot_curves(self.path, os.path.join(self.out, "curves.png"))
        except (ImportError, KeyError):  # matplotlib is optional; a run may have logged nothing
            pass


# ---------------------------------------------------------------------- the sampling command
def slerp(a, b, t):
    """Spherical interpolation between latents (White 2016), better than linear in high
    dimension."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


class Generate:
    """``generate(n, seed=0, temperature=1.0, z=None, labels=None, **kw)`` -> images in [-1, 1]
    from a checkpoint's EMA generator (or raw G), in chunks of 256; ``kw`` go to G's forward.
    For a text run (``vocab``: index -> character), (n, L) indices of the likeliest characters.

    ``build(run, channels, num_classes)`` is the script's ``build_models`` (G is its first);
    ``latent(n, z_dim, generator=g)`` draws z (default N(0, I)). It carries ``model``,
    ``z_dim``, ``num_classes``, ``used_ema`` and ``run`` (the run's flags).
    """

    def __init__(self, script, path, device, use_ema, build, latent=torch.randn):
        ckpt = load_checkpoint(path, script, device)
        self.run, self.device, self.latent = argparse.Namespace(**ckpt["args"]), device, latent
        self.z_dim, self.num_classes = self.run.z_dim, ckpt.get("num_classes", 0)
        self.kind = kind_of(ckpt)  # text: __call__ returns character indices
        self.used_ema = use_ema and ckpt.get("ema") is not None
        self.model = build(self.run, ckpt["channels"], self.num_classes)[0].to(device)
        load_state(self.model, ckpt["ema"] if self.used_ema else ckpt["G"], "generator")
        self.model.eval()

    @torch.no_grad()
    def __call__(self, n=None, seed=0, temperature=1.0, z=None, labels=None, **kw):
        if z is None:
            z = self.latent(n, self.z_dim, generator=torch.Generator().manual_seed(seed))
            z = z * temperature
        if self.num_classes and labels is None:
            labels = torch.arange(len(z)) % self.num_classes
        out = []
        with private_rng(torch.device(self.device), seed):  # G's own noise, from seed too
            for i in range(0, len(z), 256):
                inputs = [z[i : i + 256]] + ([labels[i : i + 256]] if self.num_classes else [])
                out.append(self.model(*(t.to(self.device) for t in inputs), **kw).float().cpu())
        out = torch.cat(out)
        return self.kind.decode(out)


def sample_device(name):
    """The device for ``--sample`` (``auto``: CUDA when there is one)."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but CUDA is not available; use --device cpu")
    return device


class Sampling:
    """What ``--sample`` works with: the generator of ``--checkpoint`` (``generate``, as
    the script's ``load_generator`` returns it), the folder to write to and a time stamp."""

    def __init__(self, script, args, load_generator):
        if not args.checkpoint:
            raise UserError("--sample needs --checkpoint (a .pt file, a run directory, or auto)")
        if args.sample < 1 or args.temperature <= 0 or args.interpolate < 0:
            raise UserError(
                "--sample must be at least 1, --temperature positive and --interpolate not negative"
            )
        self.args, self.path = args, find_checkpoint(script, args.checkpoint)
        self.device = sample_device(args.device)
        self.generate = load_generator(self.path, self.device, use_ema=not args.no_ema)
        self.which = "EMA" if self.generate.used_ema else "raw"
        self.out = args.out or os.path.join(run_dir_of(self.path), "samples")
        self.stamp = time.strftime("%Y%m%d-%H%M%S")

        self.kind = getattr(self.generate, "kind", Images())  # how its samples are written

    def stem(self, name):
        """``<out>/<name>_<time>``: the kind's ``write`` adds the extension."""
        return os.path.join(self.out, f"{name}_{self.stamp}")

    def file(self, name, ext="png"):
        return f"{self.stem(name)}.{ext}"

    def grid(self, nrow=None, note="", **kw):
        """``--sample N``: N samples in one file (a grid; conditional: one row per class)."""
        a, nc = self.args, getattr(self.generate, "num_classes", 0)
        n = a.sample
        if nc:
            kw["labels"] = (torch.arange(n) % nc).sort().values
            nrow = nrow or int(math.ceil(n / nc))
        x = self.generate(n, seed=a.seed, temperature=a.temperature, **kw)
        path = self.kind.write(x, self.stem("sample"), row=nrow)
        print(
            f"wrote {path} ({n} {self.kind.unit}, {self.which} generator, "
            f"temperature {a.temperature}{note})"
        )
        return path

    def interpolation(self, note="", **kw):
        """``--interpolate K``: N latent walks of K steps (slerp), a grid and a GIF."""
        from common.images import make_grid, save_gif

        a, nc = self.args, getattr(self.generate, "num_classes", 0)
        n, k = a.sample, a.interpolate
        gen = torch.Generator().manual_seed(a.seed)
        draw = getattr(self.generate, "latent", torch.randn)  # the latent the script draws
        keys = draw(n + 1, self.generate.z_dim, generator=gen) * a.temperature
        t = torch.linspace(0, 1, k).view(1, k, 1)
        z = slerp(keys[:-1, None], keys[1:, None], t).reshape(n * k, -1)
        if nc:
            kw["labels"] = torch.randint(nc, (n,), generator=gen).repeat_interleave(k)
        x = self.generate(z=z, seed=a.seed, **kw)
        path = self.kind.write(x, self.stem("interpolate"), row=k)  # a walk per row
        what = f"{n} walks of {k} steps, {self.which} generator{note}"
        if not self.kind.picture:
            print(f"wrote {path} ({what}, temperature {a.temperature})")
            return path
        frames = [make_grid(x[i::k], nrow=int(math.ceil(math.sqrt(n)))) for i in range(k)]
        gif = save_gif(frames + frames[::-1], self.file("interpolate", "gif"), last_ms=120)
        print(f"wrote {path} and {gif} ({what})")
        return path


def sample(script, args, load_generator):
    """The standard ``--sample N [--interpolate K]`` command."""
    s = Sampling(script, args, load_generator)
    return s.interpolation() if args.interpolate else s.grid()


def main(script, args, train, load_generator, own_sample=None):
    """Train, or sample with ``--sample`` (``own_sample``: the script's ``sample`` where it has
    extra modes). A user's mistake ends in one line and status 1; a stop by a signal in one
    line that says how to continue, and status 128 + the signal."""
    try:
        if args.sample:
            return (own_sample or sample)(script, args, load_generator)
        return train(args)
    except Stopped as e:
        if e.rank == 0:
            print(
                f"{script}: stopped at step {e.step}; continue with --resume {e.out}",
                file=sys.stderr,
                flush=True,
            )
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # before the run began, or a second Ctrl-C
        print(f"{script}: interrupted{end_active_run()}", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    except UserError as e:
        end_active_run()
        print(f"{script}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = end_active_run()
        print(
            f"{script}: error: {e.strerror} writing {e.filename or 'a file'}{where}",
            file=sys.stderr,
        )
        sys.exit(1)
    finally:
        end_active_run()
        if dist.is_initialized():
            dist.destroy_process_group()


def end_active_run():
    """Close the bar of a run that ends by an exception and give the signals back; returns
    "; <where the last good checkpoint is>" for the line that reports it."""
    run = Run.active
    if run is None:
        return ""
    if run.pbar is not None:
        run.pbar.close()
    run.release_signals()
    return f"; {last_good(run.out)}" if run.out else ""
