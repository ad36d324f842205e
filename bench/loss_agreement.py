#!/usr/bin/env python3
"""Do laser_jax's fast train-step path and the PyTorch baseline compute the same LaSER loss?

One random-init Hugging Face model (built by the baseline's own `build_model`), its weights
loaded into laser_jax through `laser_jax.model.hf_io`, one random batch (the baseline's own
`make_train_batch`: N queries, N*G documents, N explicit rows with "\\n\\n" segment ids), and
the five losses computed by both without dropout:

  torch: the baseline's reference (`laser_torch.latent_encode` / `explicit_encode` /
         `laser_losses`) under no_grad, in each --dtypes entry (the model cast to it);
  jax:   `laser_jax.method.objective.laser_objective` under jit, with the bench's fast-path
         settings (--attn, --remat, LoRA r=--lora-r: adapters start at B = 0, so they add
         nothing, but the LoRA code path and the base weights held in the compute dtype are
         the ones the train step runs).

Verdicts. fp32: |jax - torch| <= 1e-4 + 1e-3 * |torch| for each loss (same function, same
precision). bf16: JAX's bf16 loss must lie as near the exact (fp32) loss as the baseline's own
bf16 rounding puts the baseline, |jax_bf16 - torch_fp32| <= max(3 * |torch_bf16 - torch_fp32|,
--bf16-rtol * |torch_fp32|); the direct |jax_bf16 - torch_bf16| is reported beside it. The
baseline computes its losses in bf16 ("as officially") and laser_jax in float32, so the two bf16
values differ by the baseline's rounding at least. fp32 always runs first (it is the yardstick),
and needs fp32 in both, so with `--attn cudnn` (bf16/fp16 only) fp32 runs JAX's XLA attention.

The JAX side runs in a child process (`--jax-part`) that never imports torch, so the two
frameworks' CUDA libraries are never loaded into one process; they meet through a temporary
directory holding the HF weights (safetensors), the batch (npz) and the JAX losses (json).

  python bench/loss_agreement.py SHARED/bench/torch_baseline.py --arch tiny --device cpu
  python bench/loss_agreement.py SHARED/bench/torch_baseline.py --arch qwen3-0.6b --attn cudnn --remat full
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_laser import (add_batch_shape_args, load_baseline, recorded_command, recorded_path,  # noqa: E402
                         write_json)  # (also puts the repo root on sys.path)

LOSSES = ("loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid")
JAX_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", help="path of the shared torch_baseline.py (imports its ../reference)")
    p.add_argument("--arch", default="qwen3-0.6b")
    p.add_argument("--device", default="", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtypes", default="bf16", help="checked against fp32, which always runs")
    add_batch_shape_args(p)
    p.add_argument("--attn", default="", help="laser_jax attention_impl for bf16 ('' = auto)")
    p.add_argument("--remat", default="full")
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--bf16-rtol", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def torch_losses(B, model, batch, K, split_id, eos_id):
    import torch

    R = B.R
    with torch.no_grad():
        q_emb, q_steps = R.latent_encode(model, batch["q_ids"], batch["q_mask"], K)
        d_emb, _ = R.latent_encode(model, batch["d_ids"], batch["d_mask"], K)
        e_emb, e_steps = R.explicit_encode(model, batch["e_ids"], batch["e_mask"], batch["q_len"], K, split_id, eos_id)
        out = R.laser_losses(q_emb, q_steps, d_emb, e_emb, e_steps)
    return {k: float(out[k].float()) for k in LOSSES}


def jax_batch(batch, split_id, K):
    import numpy as np

    from laser_jax.data.segments import segment_positions_batch

    host = {k: v.cpu().numpy().astype(np.int32) for k, v in batch.items()}
    host["e_seg"] = segment_positions_batch(host["e_ids"], host["e_mask"], host.pop("q_len"),
                                            np.array([split_id]), K, "linspace")
    return host


def jax_losses(base_cfg, params, dtype: str, attn: str, remat: str, lora_r: int, batch, K, eos_id, seed: int):
    """The five losses with the float32 `params` computed in `dtype` on the given path."""
    import jax
    import jax.numpy as jnp

    from laser_jax.method.losses import LossConfig
    from laser_jax.model.decoder import Decoder, init_variables
    from laser_jax.method.objective import laser_objective
    from laser_jax.train.step import split_variables

    cfg = base_cfg.replace(compute_dtype=JAX_DTYPES[dtype], attention_impl=attn or None, remat_policy=remat,
                           lora_rank=lora_r)
    variables = {**init_variables(cfg, jax.random.key(seed)), "params": params}
    trainable, frozen = split_variables(cfg, variables)
    model = Decoder(cfg)

    @jax.jit
    def objective(variables, batch):
        return laser_objective(model, variables, batch, num_steps=K, loss_cfg=LossConfig(), eos_id=eos_id)[1]

    metrics = objective({**frozen, **trainable}, {k: jnp.asarray(v) for k, v in batch.items()})
    return {k: float(metrics[k]) for k in LOSSES}


def jax_part(argv) -> None:
    """Child process: JAX losses for each dtype from WORKDIR/{model,batch.npz} -> WORKDIR/jax.json."""
    import numpy as np

    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--dtypes", required=True)
    p.add_argument("--attn", default="")
    p.add_argument("--remat", required=True)
    p.add_argument("--lora-r", type=int, required=True)
    p.add_argument("--K", type=int, required=True)
    p.add_argument("--eos-id", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    a = p.parse_args(argv)
    from laser_jax.model.hf_io import load_pretrained

    batch = dict(np.load(os.path.join(a.workdir, "batch.npz")))
    base_cfg, params = load_pretrained(os.path.join(a.workdir, "model"), param_dtype="float32")  # read once
    out = {}
    for dtype in a.dtypes.split(","):
        attn = "xla" if dtype == "fp32" and a.attn == "cudnn" else a.attn
        t0 = time.perf_counter()
        losses = jax_losses(base_cfg, params, dtype, attn, a.remat, a.lora_r, batch, a.K, a.eos_id, a.seed)
        out[dtype] = {"losses": losses, "attention_impl": attn or "auto", "seconds": time.perf_counter() - t0}
    import jax

    out["env"] = {"jax_device": jax.devices()[0].device_kind, "jax": jax.__version__}
    with open(os.path.join(a.workdir, "jax.json"), "w") as f:
        json.dump(out, f)


def verdicts(results: dict, bf16_rtol: float) -> dict:
    """{dtype: {loss: {"torch", "jax", "diff", "tol", "ok", ...}}}; see the module docstring."""
    exact = results["fp32"]["torch"]
    out = {}
    for dtype, pair in results.items():
        rows = {}
        for k in LOSSES:
            t, j = pair["torch"][k], pair["jax"][k]
            if dtype == "fp32":
                tol, err = 1e-4 + 1e-3 * abs(t), abs(j - t)
                rows[k] = {"torch": t, "jax": j, "diff": abs(j - t), "tol": tol, "ok": err <= tol}
            else:
                tol = max(3 * abs(t - exact[k]), bf16_rtol * abs(exact[k]))
                rows[k] = {"torch": t, "jax": j, "diff": abs(j - t), "torch_vs_fp32": abs(t - exact[k]),
                           "jax_vs_fp32": abs(j - exact[k]), "tol": tol, "ok": abs(j - exact[k]) <= tol}
        out[dtype] = rows
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    dtypes = ["fp32"] + [d for d in a.dtypes.split(",") if d and d != "fp32"]
    unknown = sorted(set(dtypes) - set(JAX_DTYPES))
    if unknown:
        raise SystemExit(f"--dtypes: {unknown} not in {sorted(JAX_DTYPES)}")
    B = load_baseline(a.baseline)
    import numpy as np
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.device = device
    model = B.build_model(a.arch, device, torch.float32, "sdpa", a.seed)
    model.eval()
    batch, split_id, eos_id = B.make_train_batch(a, model.config.vocab_size, device,
                                                 torch.Generator().manual_seed(a.seed))
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        model.save_pretrained(os.path.join(workdir, "model"))
        np.savez(os.path.join(workdir, "batch.npz"), **jax_batch(batch, split_id, a.K))
        for dtype in dtypes:
            t0 = time.perf_counter()
            model.to(B.DTYPES[dtype])
            results[dtype] = {"torch": torch_losses(B, model, batch, a.K, split_id, eos_id),
                              "torch_seconds": time.perf_counter() - t0}
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--jax-part", workdir, "--dtypes",
                        ",".join(dtypes), "--attn", a.attn, "--remat", a.remat, "--lora-r", str(a.lora_r),
                        "--K", str(a.K), "--eos-id", str(eos_id), "--seed", str(a.seed)], check=True)
        with open(os.path.join(workdir, "jax.json")) as f:
            jax_out = json.load(f)
    for dtype in dtypes:
        results[dtype].update(jax=jax_out[dtype]["losses"], jax_attention_impl=jax_out[dtype]["attention_impl"],
                              jax_seconds=jax_out[dtype]["seconds"])
    checks = verdicts(results, a.bf16_rtol)
    ok = all(r["ok"] for rows in checks.values() for r in rows.values())
    report = {"env": {**jax_out["env"], "torch_device": device, "torch": torch.__version__,
                      "command": recorded_command((a.baseline,))},
              "args": {**vars(a), "baseline": recorded_path(a.baseline)}, "results": results, "checks": checks,
              "all_ok": ok}
    for dtype, rows in checks.items():
        r = results[dtype]
        print(f"[{dtype}] jax attention={r['jax_attention_impl']}  (torch {r['torch_seconds']:.0f} s, "
              f"jax {r['jax_seconds']:.0f} s)")
        print(f"  {'loss':<17} {'torch':>12} {'jax':>12} {'|jax-torch|':>11} {'|torch-fp32|':>12} "
              f"{'|jax-fp32|':>11} {'tol':>9}  ok")
        for k, r in rows.items():
            near = (f"{r['torch_vs_fp32']:12.2e} {r['jax_vs_fp32']:11.2e}" if "jax_vs_fp32" in r else f"{'':24}")
            print(f"  {k:<17} {r['torch']:12.6f} {r['jax']:12.6f} {r['diff']:11.2e} {near} {r['tol']:9.2e}  {r['ok']}")
    print(f"losses agree: {ok}")
    if a.out:
        write_json(a.out, report)
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--jax-part"]:
        jax_part(sys.argv[2:])
    else:
        sys.exit(0 if main()["all_ok"] else 1)
