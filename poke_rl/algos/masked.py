"""Masked operations: illegal actions excluded from every softmax, max, argmax and logsumexp.

Masks are bool [B, 10], True = legal. Illegal entries are filled with -inf before every softmax,
max, argmax and logsumexp, so they get probability exactly 0 and never win; this needs at least
one legal action per row, which ``check_batch`` enforces (a row of all -inf would give NaN).
A terminal row's next value is cut with ``where`` (``bellman_target``), so the -inf of an empty
next mask never leaks into a target.
"""

from __future__ import annotations

import torch

from poke_rl.batch import Batch


def mask_illegal(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` with illegal entries set to -inf (excluded from any max, softmax, logsumexp)."""
    return values.masked_fill(~mask, float("-inf"))


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over legal actions; illegal ones are -inf (probability exactly 0)."""
    return torch.log_softmax(mask_illegal(logits.float(), mask), dim=-1)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Probabilities over legal actions; illegal ones are exactly 0."""
    return torch.softmax(mask_illegal(logits.float(), mask), dim=-1)


def masked_argmax(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the best legal action per row, int64 [B]."""
    return mask_illegal(values, mask).argmax(dim=-1)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Best legal value per row; -inf for a row with no legal action (guard with ``where``)."""
    return mask_illegal(values, mask).amax(dim=-1)


def masked_logsumexp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logsumexp over legal actions only; illegal entries get zero gradient."""
    return torch.logsumexp(mask_illegal(values, mask), dim=-1)


def masked_cross_entropy(
    logits: torch.Tensor, mask: torch.Tensor, action: torch.Tensor
) -> torch.Tensor:
    """Per-row -log pi(action | s) under the masked softmax, float32 [B]; no logit penalty."""
    log_probs = masked_log_softmax(logits, mask)
    return -log_probs.gather(1, action.long().unsqueeze(1)).squeeze(1)


def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row entropy of the masked policy, float32 [B]."""
    log_probs = masked_log_softmax(logits, mask)
    # 0 * log 0 is 0, but 0 * -inf is NaN in floating point: zero the illegal log-probs first.
    return -(log_probs.exp() * log_probs.masked_fill(~mask, 0.0)).sum(dim=-1)


def gather_action(values: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """values[b, action[b]], [B]."""
    return values.gather(1, action.long().unsqueeze(1)).squeeze(1)


def bellman_target(
    reward: torch.Tensor, done: torch.Tensor, next_value: torch.Tensor, gamma: float
) -> torch.Tensor:
    """r + gamma * next_value, nothing after a terminal: ``where``, not ``(1 - done) *``, so the
    -inf or NaN next value of a terminal row with an empty next mask cannot leak in."""
    return reward + gamma * torch.where(done.bool(), 0.0, next_value)


def check_masks(mask: torch.Tensor, action: torch.Tensor | None = None) -> None:
    """Raise ValueError if a row has no legal action or its data action is illegal.

    Reads tensors on the host: free on CPU, a device sync on CUDA (see ``should_check``).
    """
    legal_rows = mask.any(dim=1)
    if not bool(legal_rows.all()):
        row = int((~legal_rows).nonzero()[0, 0])
        raise ValueError(f"row {row} of the action mask has no legal action (all False)")
    if action is not None:
        taken_legal = mask.gather(1, action.long().unsqueeze(1)).squeeze(1)
        if not bool(taken_legal.all()):
            row = int((~taken_legal).nonzero()[0, 0])
            raise ValueError(f"row {row}: data action {int(action[row])} is illegal under its mask")


def check_batch(batch: Batch) -> None:
    """Raise ValueError on an unusable batch: a state with no legal action, an illegal data
    action, or a non-terminal row whose next state has no legal action."""
    check_masks(batch.mask, batch.action)
    next_ok = batch.done.bool() | batch.next_mask.any(dim=1)
    if not bool(next_ok.all()):
        row = int((~next_ok).nonzero()[0, 0])
        raise ValueError(f"row {row} is not terminal but its next_mask has no legal action")


def should_check(device: torch.device, debug_checks: bool) -> bool:
    """Whether the hot path validates masks: always on CPU, where reading a tensor costs a few
    microseconds and no sync; on an accelerator only with ``debug_checks`` (it would stall the
    device queue every step). The loader's data is already validated by prep."""
    return device.type == "cpu" or debug_checks
