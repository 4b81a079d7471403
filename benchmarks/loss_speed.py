"""Re-Attention loss: vectorised (cattune) vs a per-row Python loop (the reference approach).

Both start from the same mean-attention maps Ā [B, T, T] and the same mask; the timed part is
forward and backward to Ā (the values and gradients w.r.t. the logits behind Ā are checked equal
first). The loop version walks every example and row and gathers the causal and
non-causal visible columns with boolean indexing, as the authors' code does.

    python benchmarks/loss_speed.py [--batch 8] [--seq-len 256] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, markdown_table, median_time, random_rects

from cattune.training.loss import reattention_loss
from cattune.training.mask import CausalMask, dense_mask, pack_masks


def loop_loss(attn: torch.Tensor, m: torch.Tensor, am: torch.Tensor, alpha: float) -> torch.Tensor:
    """`div` loss row by row: for each example, for each row, gather the two column sets."""
    seq_len = attn.shape[-1]
    lower = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    total = attn.new_zeros(())
    valid = 0
    for b in range(attn.shape[0]):
        visible = lower & (am[b] > 0)
        for i in range(seq_len):
            if am[b, i] == 0:
                continue
            causal = attn[b, i][m[b, i] & visible[i]]
            other = attn[b, i][~m[b, i] & visible[i]]
            if causal.numel() == 0 or other.numel() == 0:
                continue
            valid += 1
            a1, a0 = causal.mean(), other.mean()
            if a1 / a0 < alpha:
                total = total - torch.log1p(a1) / torch.log1p(a0)
    return total / max(valid, 1)


def vectorised_loss(attn: torch.Tensor, mask: CausalMask, m: torch.Tensor, am: torch.Tensor):
    mass = (attn * m).sum(-1)
    return reattention_loss(mass, mask, am, alpha=2.0, loss_type="div").loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    batch, seq_len = args.batch, args.seq_len
    mask = pack_masks(random_rects(batch, seq_len), seq_len)
    m = dense_mask(mask)
    am = torch.ones(batch, seq_len, dtype=torch.long)
    for b in range(1, batch):
        am[b, seq_len - 8 * b :] = 0  # right padding of 0, 8, 16, ... tokens
    visible = torch.ones(seq_len, seq_len, dtype=torch.bool).tril() & (am[:, None, :] > 0)
    logits = torch.randn(batch, seq_len, seq_len, requires_grad=True)

    def run(fn) -> torch.Tensor:
        logits.grad = None
        attn = torch.softmax(logits.masked_fill(~visible, float("-inf")), -1)
        loss = fn(attn)
        loss.backward()
        return loss

    loop_value = run(lambda attn: loop_loss(attn, m, am, 2.0))
    loop_grad = logits.grad.clone()
    vec_value = run(lambda attn: vectorised_loss(attn, mask, m, am))
    assert torch.allclose(loop_value, vec_value, atol=1e-5), (loop_value, vec_value)
    assert torch.allclose(loop_grad, logits.grad, atol=1e-6)

    attn = torch.softmax(logits.detach().masked_fill(~visible, float("-inf")), -1)
    attn.requires_grad_(True)

    def timed(fn) -> None:
        attn.grad = None
        fn(attn).backward()

    t_loop = median_time(lambda: timed(lambda a: loop_loss(a, m, am, 2.0)), args.repeats)
    t_vec = median_time(lambda: timed(lambda a: vectorised_loss(a, mask, m, am)), args.repeats * 20)
    print(f"Re-Attention loss (`div`), forward + backward, B={batch}, T={seq_len}, median")
    print(f"Machine: {machine()}\n")
    print(
        markdown_table(
            ["implementation", "time per batch", "speed-up"],
            [
                ["per-row Python loop (reference approach)", f"{t_loop * 1e3:.1f} ms", "1.0x"],
                ["vectorised (cattune)", f"{t_vec * 1e3:.2f} ms", f"{t_loop / t_vec:.0f}x"],
            ],
        )
    )


if __name__ == "__main__":
    main()
