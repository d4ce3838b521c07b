"""Shared by the bench/torch_<family>.py scripts: the uniform protocol the
harness (bench/run.mjs) speaks.

A script is called as
    python bench/torch_<family>.py --threads 2 --iters 7 --modes eager,compile --cases '<json list>'
where each case is {"name": ..., plus whatever the family needs}, and prints
one JSON line on stdout:
    {"torch": "2.13.0", "threads": 2, "compile": true|false,
     "results": {"<case name>": {"eager": ms, "compile": ms}}, "errors": {"<case name>:<mode>": "..."}}
Medians in milliseconds, after warm-up calls (torch.compile compiles during
the warm-up, which is not timed). `compile` is false where torch.compile is
unavailable (PyTorch < 2, or no C++ compiler); the compile column then says so.
A compiled time is kept only where the compiled result agrees with eager's
(`disagreement`); otherwise the case's compile entry is an error.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

# Whether the user chose inductor's cache directory (then it is left alone).
_USER_CACHE_DIR = "TORCHINDUCTOR_CACHE_DIR" in os.environ


def set_threads(threads):
    """torch.set_num_threads, and inductor's on-disk cache in a directory of its own for this
    ISA (ATEN_CPU_CAPABILITY) and thread count, before anything is compiled. Seen with torch
    2.13.0+cpu (2026-12-01): the cache's key leaves out ATEN_CPU_CAPABILITY, so a run under
    ATEN_CPU_CAPABILITY=avx2 left AVX2 kernels that a later default (AVX-512) run of the same
    formulas loaded: it died with "double free or corruption" (16 x 4096 policy loss, 2 threads),
    and the reverse had returned a policy loss 3 % off eager's. With a directory per
    configuration both runs agree with eager."""
    torch.set_num_threads(threads)
    if not _USER_CACHE_DIR:
        isa = os.environ.get("ATEN_CPU_CAPABILITY") or "native"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
            tempfile.gettempdir(), f"rlk-inductor-{os.getuid()}-{isa}-t{threads}")


def parse_args(extra=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--cases", required=True)
    if extra:
        extra(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    args.cases = json.loads(args.cases)
    args.modes = [m for m in args.modes.split(",") if m]
    return args


def has_compile():
    return hasattr(torch, "compile") and int(torch.__version__.split(".")[0]) >= 2


def median_ms(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def maybe_compile(fn, mode):
    """fn itself for eager; torch.compile(fn) (inductor, static shapes) for compile."""
    if mode == "eager":
        return fn
    return torch.compile(fn, dynamic=False)


def _flat(x):
    """The tensors of a callable's result (a tensor, or tuples / lists of them), as float64."""
    if isinstance(x, torch.Tensor):
        return [x.detach().double()]
    if isinstance(x, (tuple, list)):
        return [t for y in x for t in _flat(y)]
    return []


def disagreement(got, want):
    """Why a compiled result is not eager's (max |difference| above 1e-3 of eager's largest
    entry, NaN where eager has none, another shape), or None. Seen: torch 2.13.0+cpu's inductor,
    loading kernels that a run with another ATEN_CPU_CAPABILITY had cached (see set_threads),
    returned a policy loss 3% off eager's in a tenth of the time, so a compiled time only counts
    when it agrees."""
    a, b = _flat(got), _flat(want)
    if len(a) != len(b):
        return f"{len(a)} outputs, eager {len(b)}"
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return f"shape {list(x.shape)}, eager {list(y.shape)}"
        if torch.isnan(x).ne(torch.isnan(y)).any():
            return "NaN where eager has none (or the reverse)"
        ok = ~torch.isnan(y)
        diff = (x[ok] - y[ok]).abs().max().item() if ok.any() else 0.0
        scale = y[ok].abs().max().item() if ok.any() else 0.0
        if diff > 1e-3 * max(scale, 1e-12):
            return f"max |difference| {diff:.3g} against eager's largest entry {scale:.3g}"
    return None


def run(args, make_case):
    """make_case(case, mode) returns a zero-argument callable to time (mode: eager | compile)."""
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "compile": has_compile(),
           "results": {}, "errors": {}}
    for case in args.cases:
        res = {}
        for mode in args.modes:
            if mode == "compile" and not has_compile():
                out["errors"][f"{case['name']}:compile"] = f"torch {torch.__version__} has no torch.compile"
                continue
            try:
                if mode == "compile":
                    # Each case compiled afresh: dynamo caches per code object, and after
                    # recompile_limit (8) guard failures of the same function (other shapes,
                    # kinds, grad mode) it silently runs it eagerly.
                    torch._dynamo.reset()
                fn = make_case(case, mode)
                ms = median_ms(fn, args.iters, max(args.warmup, 2 if mode == "compile" else 1))
                if mode == "compile":
                    bad = disagreement(fn(), make_case(case, "eager")())
                    if bad:
                        raise RuntimeError(f"wrong result: {bad}")
                res[mode] = ms
            except Exception as e:  # a failing mode leaves the others
                out["errors"][f"{case['name']}:{mode}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            print(f"RLK_PROGRESS torch {case['name']} {mode}", file=sys.stderr, flush=True)
        out["results"][case["name"]] = res
    print(json.dumps(out), flush=True)
