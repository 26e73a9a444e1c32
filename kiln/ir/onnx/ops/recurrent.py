"""ONNX converters for the recurrent layers (RNN, GRU, LSTM, LinearAttention), unrolled over the sequence: Kiln
compiles static shapes, so the sequence length is known and each time step becomes a few matmuls
and elementwise ops the backend fuses. Gate order and formulas follow ONNX's reference
(onnx/reference/ops/op_{rnn,gru,lstm}.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from kiln.errors import FrontendError
from kiln.ir.onnx.ops.registry import NodeContext, converts

Activation = Callable[[torch.Tensor], torch.Tensor]
_ACTIVATIONS: dict[str, Activation] = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}
_DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _rnn_step(x, h, cell, w, r, w_bias, r_bias, peepholes, act: list[Activation], linear_before_reset: bool):
    return act[0](x @ w.T + h @ r.T + w_bias + r_bias), cell


def _gru_step(x, h, cell, w, r, w_bias, r_bias, peepholes, act: list[Activation], linear_before_reset: bool):
    (w_z, w_r, w_h), (r_z, r_r, r_h) = w.chunk(3), r.chunk(3)
    (wb_z, wb_r, wb_h), (rb_z, rb_r, rb_h) = w_bias.chunk(3), r_bias.chunk(3)
    update = act[0](x @ w_z.T + h @ r_z.T + wb_z + rb_z)
    reset = act[0](x @ w_r.T + h @ r_r.T + wb_r + rb_r)
    if linear_before_reset:
        candidate = act[1](x @ w_h.T + reset * (h @ r_h.T + rb_h) + wb_h)
    else:
        candidate = act[1](x @ w_h.T + (reset * h) @ r_h.T + rb_h + wb_h)
    return (1 - update) * candidate + update * h, cell


def _lstm_step(x, h, cell, w, r, w_bias, r_bias, peepholes, act: list[Activation], linear_before_reset: bool):
    input_gate, output_gate, forget_gate, candidate = (x @ w.T + h @ r.T + w_bias + r_bias).chunk(4, -1)
    p_input, p_output, p_forget = peepholes.chunk(3)
    input_gate = act[0](input_gate + p_input * cell)
    forget_gate = act[0](forget_gate + p_forget * cell)
    cell = forget_gate * cell + input_gate * act[1](candidate)
    output_gate = act[0](output_gate + p_output * cell)
    return output_gate * act[2](cell), cell


_STEPS = {"RNN": _rnn_step, "GRU": _gru_step, "LSTM": _lstm_step}


def _activations(c: NodeContext, directions: int) -> list[list[Activation]]:
    names = c.attr("activations")
    names = [n.decode() if isinstance(n, bytes) else n for n in names] if names else _DEFAULT_ACTIVATIONS[c.node.op_type] * directions
    unknown = sorted(set(names) - set(_ACTIVATIONS))
    if unknown or c.attr("activation_alpha") or c.attr("activation_beta"):
        raise _refuse(c, f"activations {unknown or 'with alpha/beta parameters'}")
    per_direction = len(names) // directions
    return [[_ACTIVATIONS[n] for n in names[d * per_direction:(d + 1) * per_direction]] for d in range(directions)]


def _refuse(c: NodeContext, what: str) -> FrontendError:
    return FrontendError(f"ONNX {c.node.op_type} node '{c.node.name or c.node.output[0]}': {what} is not supported")


@converts("RNN", "GRU", "LSTM")
def _recurrent(c: NodeContext):
    op_type, gates = c.node.op_type, _GATES[c.node.op_type]
    x, w, r, bias, _, initial_h = (c.tensor(i) for i in range(6))
    initial_c, peepholes = (c.tensor(6), c.tensor(7)) if op_type == "LSTM" else (None, None)
    if c.attr("clip") is not None or c.attr("input_forget", 0):
        raise _refuse(c, "cell clipping or input_forget")
    layout = c.attr("layout", 0)
    if layout:  # batch-major: [batch, seq, ...] and states [batch, directions, hidden]
        x = x.transpose(0, 1)
        initial_h = initial_h.transpose(0, 1) if initial_h is not None else None
        initial_c = initial_c.transpose(0, 1) if initial_c is not None else None
    length, batch = x.shape[0], x.shape[1]
    directions, hidden = w.shape[0], r.shape[-1]
    lengths = c.constant(4)
    if lengths is not None and np.any(np.asarray(lengths) != length):
        raise _refuse(c, "sequence_lens shorter than the sequence")
    zeros = torch.zeros((batch, hidden), dtype=x.dtype)
    outputs, last_h, last_c = [], [], []
    for direction, act in enumerate(_activations(c, directions)):
        h = initial_h[direction] if initial_h is not None else zeros
        cell = initial_c[direction] if initial_c is not None else zeros
        both = bias[direction] if bias is not None else torch.zeros(2 * gates * hidden, dtype=x.dtype)
        w_bias, r_bias = both.chunk(2)
        holes = peepholes[direction] if peepholes is not None else torch.zeros(3 * hidden, dtype=x.dtype)
        reverse = direction == 1 or c.attr("direction", "forward") == "reverse"
        steps: list[torch.Tensor] = [zeros] * length
        for t in (reversed(range(length)) if reverse else range(length)):
            h, cell = _STEPS[op_type](x[t], h, cell, w[direction], r[direction], w_bias, r_bias, holes, act,
                                      bool(c.attr("linear_before_reset", 0)))
            steps[t] = h
        outputs.append(torch.stack(steps))
        last_h.append(h)
        last_c.append(cell)
    y, y_h, y_c = torch.stack(outputs, 1), torch.stack(last_h), torch.stack(last_c)  # [seq, directions, batch, hidden]
    if layout:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return (y, y_h, y_c) if op_type == "LSTM" else (y, y_h)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, time, heads·d] → [batch, heads, time, d]."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


@converts("LinearAttention")
def _linear_attention(c: NodeContext):
    """Linear attention's state recurrence (update rules linear, gated, delta, gated_delta), in float32
    as ONNX's reference computes it: state ← state·exp(decay); v ← β(v − stateᵀk) for delta rules;
    state ← state + k vᵀ; output = scale · qᵀ state."""
    query, key, value, past_state, decay, beta = (c.tensor(i) for i in range(6))
    q_heads, kv_heads = c.attr("q_num_heads"), c.attr("kv_num_heads")
    rule = c.attr("update_rule", "gated_delta")
    batch, length = query.shape[:2]
    d_k, d_v = query.shape[-1] // q_heads, value.shape[-1] // kv_heads
    q, k, v = (_heads(t, h).to(torch.float32) for t, h in ((query, q_heads), (key, kv_heads), (value, kv_heads)))
    if rule in ("gated", "gated_delta"):
        decay = decay.to(torch.float32)
        decay = decay.reshape(batch, length, kv_heads, 1).transpose(1, 2) if decay.shape[-1] == kv_heads else _heads(decay, kv_heads)
    if rule in ("delta", "gated_delta"):
        beta = beta.to(torch.float32).reshape(batch, length, beta.shape[-1], 1).transpose(1, 2)
    state = past_state.to(torch.float32) if past_state is not None else torch.zeros((batch, kv_heads, d_k, d_v))
    scale = c.attr("scale") or 1.0 / float(np.sqrt(d_k))
    outputs = []
    for t in range(length):
        k_t, v_t = k[:, :, t], v[:, :, t]
        if rule in ("gated", "gated_delta"):
            state = state * torch.exp(decay[:, :, t]).unsqueeze(-1)
        if rule in ("delta", "gated_delta"):
            v_t = beta[:, :, t] * (v_t - torch.einsum("bhdm,bhd->bhm", state, k_t))
        state = state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        read = state.repeat_interleave(q_heads // kv_heads, 1) if q_heads != kv_heads else state
        outputs.append(scale * torch.einsum("bhd,bhdm->bhm", q[:, :, t], read))
    output = torch.stack(outputs, 2).transpose(1, 2).reshape(batch, length, q_heads * d_v)
    return output.to(query.dtype), state.to(past_state.dtype if past_state is not None else query.dtype)
