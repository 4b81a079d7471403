"""Cost of one training step: plain fine-tuning vs CAT (memory-efficient) vs CAT (eager, reference).

A Llama-architecture model with random weights takes full training steps (forward + backward +
AdamW step): by default 4 layers, hidden 256, 8 heads in float32 on the CPU; with ``--shape
smollm2`` SmolLM2-135M's shape (30 layers, hidden 576, 9 heads / 3 KV heads, vocab 49152), and
with ``--device cuda --bf16`` on a GPU under bf16 autocast, where ``sdpa`` runs PyTorch's fused
(FlashAttention) kernels:

- `sdpa`      plain fine-tuning, LM loss only, SDPA attention (the baseline)
- `efficient` LM loss + Re-Attention loss, memory-efficient causal mass (default choice of path)
- `indicator` the same, forced onto the SDPA indicator-column path (used when many rows have a
              causal set)
- `eager`     LM loss + Re-Attention loss, eager attention with output_attentions=True

Time: one subprocess per sequence length runs the configurations interleaved (one step each per
round, the order rotating), so load from other processes hits all of them alike; wall time and
process CPU time (all threads) are medians over the rounds, after warm-up rounds that also create
the optimizer state. Memory: each configuration runs in a fresh subprocess; on the CPU the peak
RSS growth of a step is VmHWM after the step minus VmRSS before it, with the peak reset through
/proc/self/clear_refs before each step and MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave
RSS (Linux only); on a GPU it is the peak of allocated memory during the step minus the memory
allocated before it.

    python benchmarks/step_cost.py [--seq-len 256 1024 2048] [--batch 1] [--steps 5]
        [--shape small|smollm2] [--device cpu|cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

CONFIGS = ("sdpa", "efficient", "indicator", "eager")
SHAPES = {
    "small": dict(
        hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=8,
    ),
    "smollm2": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True,
    ),
}  # fmt: skip


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return int(match.group(1))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(args: argparse.Namespace) -> None:
    import torch
    from _common import random_rects
    from transformers import LlamaConfig, LlamaForCausalLM

    from cattune.training import attention
    from cattune.training.attention import causal_mass
    from cattune.training.loss import reattention_loss
    from cattune.training.mask import pack_masks

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seq_len, batch = args.seq_len[0], args.batch
    config = LlamaConfig(
        vocab_size=args.vocab, max_position_embeddings=seq_len, **SHAPES[args.shape]
    )
    device = torch.device(args.device)
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa").to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, args.vocab, (batch, seq_len), device=device)
    am = torch.ones(batch, seq_len, dtype=torch.long, device=device)
    mask = pack_masks(random_rects(batch, seq_len, relations=args.relations), seq_len).to(device)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    default_rows = attention.ROWS_PER_HEAD_DIM

    def step(config: str) -> None:
        with autocast:
            loss = forward(config)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    def forward(config: str):
        if config == "sdpa":
            attention.use_implementation(model, "sdpa")
            loss = model(input_ids=ids, attention_mask=am, labels=ids).loss
        else:
            attention.ROWS_PER_HEAD_DIM = 0 if config == "indicator" else default_rows
            implementation = "eager" if config == "eager" else "efficient"
            outputs, mass = causal_mass(
                model, ids, am, mask, implementation=implementation, labels=ids
            )
            loss = outputs.loss + reattention_loss(mass, mask, am).loss
            del outputs, mass  # as a trainer does: the logits are not kept through backward
        return loss

    result: dict[str, object] = {
        "groups": int(mask.group_cols.shape[1]),
        "rows": int((mask.row_group >= 0).sum(1).max()),
    }
    if args.worker == "timing":
        configs = args.configs
        for _ in range(args.warmup):
            for config in configs:
                step(config)
        times: dict[str, list[float]] = {c: [] for c in configs}
        cpu_times: dict[str, list[float]] = {c: [] for c in configs}
        for round_ in range(args.steps):
            for config in configs[round_ % len(configs) :] + configs[: round_ % len(configs)]:
                start, cpu_start = time.perf_counter(), time.process_time()
                step(config)
                times[config].append(time.perf_counter() - start)
                cpu_times[config].append(time.process_time() - cpu_start)
        for config in configs:
            result[config] = {
                "time_s": statistics.median(times[config]),
                "cpu_s": statistics.median(cpu_times[config]),
            }
    else:
        for _ in range(args.warmup):
            step(args.worker)
        peaks = []
        for _ in range(args.steps):
            if cuda:
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                step(args.worker)
                peaks.append((torch.cuda.max_memory_allocated() - before) / 1024)
                continue
            before = _status_kb("VmRSS")
            _reset_peak()
            step(args.worker)
            peaks.append(_status_kb("VmHWM") - before)
        result["peak_mb"] = statistics.median(peaks) / 1024
    print(json.dumps(result))


def measure(config: str, seq_len: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [
        sys.executable, __file__, "--worker", config, "--seq-len", str(seq_len),
        "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--vocab", str(args.vocab), "--relations", str(args.relations),
        "--threads", str(args.threads), "--configs", *args.configs,
        "--shape", args.shape, "--device", args.device,
    ]  # fmt: skip
    if args.bf16:
        command.append("--bf16")
    if config != "timing":
        command[command.index("--steps") + 1] = str(args.memory_steps)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{config} T={seq_len} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratio(result: dict[str, float], base: dict[str, float] | None, key: str) -> str:
    return f"{result[key] / base[key]:.2f}x" if base else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--relations", type=int, default=8, help="causal relations per example")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--memory-steps", type=int, default=2, help="steps per memory run")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="small")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--worker", choices=(*CONFIGS, "timing"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from _common import machine, markdown_table

    rows = []
    for seq_len in args.seq_len:
        timing = measure("timing", seq_len, args)
        results = {c: {**timing[c], **measure(c, seq_len, args)} for c in args.configs}
        base = results.get("sdpa")
        for config, r in results.items():
            rows.append(
                [seq_len, config, f"{r['time_s'] * 1e3:.0f} ms", _ratio(r, base, "time_s"),
                 f"{r['cpu_s'] * 1e3:.0f} ms", _ratio(r, base, "cpu_s"),
                 f"{r['peak_mb']:.0f} MB", _ratio(r, base, "peak_mb"), r["rows"], r["groups"]]
            )  # fmt: skip
    shape = ", ".join(f"{k} {v}" for k, v in SHAPES[args.shape].items())
    print(
        f"One training step (forward + backward + AdamW), Llama ({shape}), "
        f"{'bf16 autocast' if args.bf16 else 'float32'} on {args.device}, "
        f"vocab {args.vocab}, batch {args.batch}, {args.relations} relations per example, "
        f"times: median of {args.steps} rounds after {args.warmup} warm-up, configurations "
        f"interleaved in one process; CPU = process CPU time, all threads; "
        f"memory = peak {'allocated GPU memory' if args.device != 'cpu' else 'RSS'} growth "
        f"during a step, median of {args.memory_steps}, one fresh process per configuration"
    )
    print(f"Machine: {machine()}\n")
    header = ["T", "config", "wall/step", "vs sdpa", "CPU/step", "vs sdpa", "peak mem", "vs sdpa"]
    header += ["causal rows", "mask groups"]
    print(markdown_table(header, rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"header": header, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
