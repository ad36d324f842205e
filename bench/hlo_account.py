#!/usr/bin/env python3
"""Count what a compiled XLA program executes: kernels, bytes and matmul FLOPs, loops included.

`compiled.cost_analysis()` counts a `while` body once, whatever its trip count, so for
programs built from `lax.scan` (the layer stack, the soft-token steps) it is far off. This
reads the optimised HLO text (`jax.jit(f).lower(...).compile().as_text()`) instead and
walks it from ENTRY, multiplying each `while` body by its known trip count:

* kernels: executed instructions of non-fused computations (each fusion, dot, copy,
  custom call, ... is one kernel launch on a GPU); parameters, constants, tuples,
  get-tuple-element, bitcasts and control flow are not counted;
* bytes: per kernel, the bytes of its operands plus its output (what a kernel without
  caching would move; it double-counts a value read by two kernels, as a GPU does);
* dot_flops: 2 x output elements x contracted elements of every dot, fused or not.

Each can be restricted to instructions whose metadata op_name matches a regular expression
(e.g. the LoRA adapters' scope). `soft_step` compiles the latent view for two K and returns
the per-soft-step difference; `train_lora_path` the train step's counts for LoRA and full
fine-tuning, and the LoRA adapters' own share.

    python bench/hlo_account.py --arch cpu-4x256 --what encode --batch 8 --len 128
    python bench/hlo_account.py --arch cpu-4x256 --what train
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
from typing import Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b(pred|s4|u4|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|f8e4m3fn|f8e5m2)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
# Instructions that launch nothing: bookkeeping, or control flow whose bodies are counted instead.
FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call", "conditional",
        "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency"}


def _bytes(type_text: str) -> float:
    total = 0.0
    for dtype, dims in _ARRAY.findall(type_text):
        total += _BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _dims(type_text: str):
    m = _ARRAY.search(type_text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def parse(hlo_text: str) -> Dict[str, list]:
    """{computation name: [instruction dicts]}; the ENTRY computation is named "ENTRY"."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = "ENTRY" if m.group(1) else m.group(2)
            computations[current] = []
            continue
        if current is None:
            continue
        m = _INSTRUCTION.match(line)
        if m:
            rest = m.group(5)
            depth, end = 1, 0
            for end, ch in enumerate(rest):  # the operand list ends at the matching ")"
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0:
                    break
            attrs = rest[end + 1:]
            name_m = re.search(r'op_name="([^"]*)"', attrs)
            computations[current].append({
                "name": m.group(2), "type": m.group(3), "op": m.group(4),
                "operands": re.findall(r"%([\w.\-]+)", rest[:end]), "attrs": attrs,
                "op_name": name_m.group(1) if name_m else ""})
    return computations


def _called(instr) -> Dict[str, str]:
    """Computations an instruction calls: {role: name}."""
    out = {}
    for role in ("body", "condition", "calls", "to_apply"):
        m = re.search(rf"\b{role}=%([\w.\-]+)", instr["attrs"])
        if m:
            out[role] = m.group(1)
    m = re.search(r"branch_computations=\{([^}]*)\}", instr["attrs"])
    if m:
        for i, name in enumerate(re.findall(r"%([\w.\-]+)", m.group(1))):
            out[f"branch{i}"] = name
    return out


def _trip_count(instr) -> int:
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr["attrs"])
    if not m:
        raise ValueError(f"while loop {instr['name']} has no known trip count")
    return int(m.group(1))


def _dot_flops(instr, shapes) -> float:
    lhs = shapes.get(instr["operands"][0], [])
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr["attrs"])
    contracted = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d) if m and lhs else 1
    return 2.0 * math.prod(_dims(instr["type"])) * contracted


def account(hlo_text: str, op_name_pattern: Optional[str] = None) -> dict:
    """Executed kernels, bytes and dot FLOPs of a compiled program (see the module doc).

    With `op_name_pattern`, only instructions whose metadata op_name matches it (for a
    fusion: the fusion's own op_name, or any fused instruction's for FLOPs) are counted.
    Returns {"kernels", "bytes", "dot_flops", "by_op": {opcode: kernels}}.
    """
    comps = parse(hlo_text)
    pattern = re.compile(op_name_pattern) if op_name_pattern else None
    counts: Dict[str, float] = collections.defaultdict(float)
    kernel_comps = set()  # computations whose instructions are kernels (not fused bodies)

    def visit(name, times, is_kernel_level):
        counts[name] += times
        if is_kernel_level:
            kernel_comps.add(name)
        for instr in comps.get(name, []):
            for role, callee in _called(instr).items():
                if role == "body":
                    visit(callee, times * _trip_count(instr), True)
                elif role == "condition":
                    visit(callee, times * (_trip_count(instr) + 1), True)
                elif role.startswith("branch"):
                    visit(callee, times, True)
                elif instr["op"] == "call":
                    visit(callee, times, True)
                else:  # fusion bodies, reduce/sort/scatter regions: run inside their kernel
                    visit(callee, times, False)

    visit("ENTRY", 1.0, True)
    result = {"kernels": 0.0, "bytes": 0.0, "dot_flops": 0.0, "by_op": collections.Counter()}
    for name, instrs in comps.items():
        times = counts.get(name, 0.0)
        if not times:
            continue
        shapes = {i["name"]: _dims(i["type"]) for i in instrs}
        types = {i["name"]: i["type"] for i in instrs}
        for instr in instrs:
            matches = pattern is None or bool(pattern.search(instr["op_name"]))
            if instr["op"] == "dot" and matches:
                result["dot_flops"] += times * _dot_flops(instr, shapes)
            if name not in kernel_comps or instr["op"] in FREE or not matches:
                continue
            result["kernels"] += times
            moved = _bytes(instr["type"]) + sum(_bytes(types.get(o, "")) for o in instr["operands"])
            result["bytes"] += times * moved
            result["by_op"][_kind(instr)] += times
    result["by_op"] = dict(result["by_op"].most_common())
    return result


def _kind(instr) -> str:
    """A kernel's kind for the tables: the opcode, or for a fusion its kind and a hint of what
    it holds (dot / copy / dynamic slice)."""
    if instr["op"] != "fusion":
        return instr["op"]
    m = re.search(r"kind=(k\w+)", instr["attrs"])
    return f"fusion:{m.group(1) if m else '?'}"


def difference(a: dict, b: dict, divide: float = 1.0) -> dict:
    """(a - b) / divide, field by field (by_op included)."""
    ops = set(a["by_op"]) | set(b["by_op"])
    by_op = {k: (a["by_op"].get(k, 0) - b["by_op"].get(k, 0)) / divide for k in ops}
    return {"kernels": (a["kernels"] - b["kernels"]) / divide, "bytes": (a["bytes"] - b["bytes"]) / divide,
            "dot_flops": (a["dot_flops"] - b["dot_flops"]) / divide,
            "by_op": {k: v for k, v in sorted(by_op.items(), key=lambda kv: -abs(kv[1])) if v}}


# Instructions of the LoRA adapters: the fused groups' scope ("lora"), or before the fusion
# (2026-11-27 code) the per-projection adapter einsums and their dropout.
LORA_OPS = r"lora|\.\.\.i,ir->\.\.\.r|\.\.\.r,ro->\.\.\.o|Dropout|bernoulli|random_bits|threefry"


def soft_step(args, batch: int, k_lo: int = 3, k_hi: int = 5) -> dict:
    """Per soft step of the compiled latent view: (count at K=k_hi - count at K=k_lo) / (k_hi
    - k_lo), so the prefill and the set-up around the scan cancel; plus the K=1 program."""
    import bench_laser

    cfg, model, variables = bench_laser.encode_model(args)
    texts = {k: bench_laser.encode_program(args, model, variables, batch, k).compiled.as_text()
             for k in (1, k_lo, k_hi)}
    counts = {k: account(t) for k, t in texts.items()}
    per_step = difference(counts[k_hi], counts[k_lo], k_hi - k_lo)
    return {"batch": batch, "len": args.enc_len, "K1": _brief(counts[1]), "per_soft_step": per_step,
            "floor_bytes": soft_step_floor_bytes(cfg, batch, args.enc_len)}


def soft_step_floor_bytes(cfg, batch: int, length: int) -> dict:
    """What a soft step must read at least: every layer's weights once, the [V, D] table once
    (logits and expected embedding in one pass) and the prefix cache once."""
    item = 2 if cfg.compute_dtype in ("bfloat16", "float16") else 4
    weights = (cfg.num_params(include_embeddings=False) - cfg.hidden_size) * item
    table = cfg.vocab_size * cfg.hidden_size * item
    prefix = 2 * cfg.num_hidden_layers * batch * length * cfg.num_key_value_heads * cfg.head_dim * item
    return {"layer_weights": weights, "table_once": table, "prefix_cache": prefix, "total": weights + table + prefix}


def train_lora_path(args) -> dict:
    """The train step's counts with LoRA and with full fine-tuning (same model and batch), and
    the LoRA adapters' own share of the LoRA step (instructions matching LORA_OPS)."""
    import bench_laser

    out = {}
    for mode in ("lora", "full"):
        args.full = mode == "full"
        text = bench_laser.train_program(args, args.remat).compiled.as_text()
        out[mode] = _brief(account(text))
        if mode == "lora":
            out["lora_adapters"] = _brief(account(text, LORA_OPS))
    return out


def _brief(counts: dict, top: int = 12) -> dict:
    return {**{k: counts[k] for k in ("kernels", "bytes", "dot_flops")},
            "by_op": dict(list(counts["by_op"].items())[:top])}


def main(argv=None):
    import bench_laser

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", default="all", choices=["all", "encode", "train"])
    p.add_argument("--batches", default="8,64", help="encode batch sizes")
    p.add_argument("--out", default="")
    args, rest = p.parse_known_args(argv)
    bench_args = bench_laser.parse_args(rest)
    result = {"env": bench_laser.environment(), "bench_args": vars(bench_args)}
    if args.what in ("all", "encode"):
        result["soft_step"] = [soft_step(bench_args, int(b)) for b in args.batches.split(",")]
    if args.what in ("all", "train"):
        result["train"] = train_lora_path(bench_args)
    print(json.dumps(result, indent=1))
    if args.out:
        bench_laser.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
