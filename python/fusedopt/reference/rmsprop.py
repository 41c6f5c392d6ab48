"""RMSprop (Hinton, lecture 6e; centered: Graves 2013, arXiv:1308.0850) in
torch.optim.RMSprop's operation order (`_single_tensor_rmsprop`), and in
TensorFlow 1's form as timm 1.0.29 reproduces it (timm/optim/rmsprop_tf.py,
RMSpropTF.step), chosen by three switches:

  eps_in_sqrt      sqrt(v + eps) instead of sqrt(v) + eps (TF)
  tf_ema_order     v += (1 - alpha) * (g^2 - v), a += (1 - alpha) * (g - a) (TF)
  lr_in_momentum   b = mu * b + lr * g / d; p -= b (TF), instead of
                   b = mu * b + g / d; p -= lr * b (torch)

TF's square_avg starts at 1 (timm: `torch.ones_like(p)`): the optimizer
creates it so, this function only steps.
"""

from __future__ import annotations

from torch import Tensor

from fusedopt.reference import WeightDecayMode, decay_factor, load_grad


def rmsprop(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    weight_decay_mode: int,
    lr_max: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    eps_in_sqrt: bool,
    tf_ema_order: bool,
    lr_in_momentum: bool,
    grad_scale: float | None = None,
) -> None:
    p, g = load_grad(param, grad, grad_scale)
    if maximize:
        g = -g
    # g_t <- grad f(theta_{t-1}) (+ lambda * theta_{t-1} for L2)
    if weight_decay_mode == WeightDecayMode.L2 and weight_decay != 0:
        g = g + weight_decay * p
    # theta_{t-1} <- (1 - lr * lambda) * theta_{t-1} (decoupled; timm's decoupled_decay)
    p = p * decay_factor(weight_decay_mode, weight_decay, lr, lr_max)
    square_avg = state["square_avg"]
    if tf_ema_order:
        # timm: square_avg.add_(grad.pow(2) - square_avg, alpha=one_minus_alpha)
        square_avg.add_(g * g - square_avg, alpha=1 - alpha)
    else:
        # v_t <- alpha * v_{t-1} + (1 - alpha) * g_t^2
        square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
    v = square_avg
    if centered:
        grad_avg = state["grad_avg"]
        if tf_ema_order:
            # timm: grad_avg.add_(grad - grad_avg, alpha=one_minus_alpha)
            grad_avg.add_(g - grad_avg, alpha=1 - alpha)
        else:
            # g^ave_t <- alpha * g^ave_{t-1} + (1 - alpha) * g_t
            grad_avg.lerp_(g, 1 - alpha)
        # v~_t <- v_t - (g^ave_t)^2
        v = square_avg.addcmul(grad_avg, grad_avg, value=-1)
    # torch: sqrt(v~_t) + eps; TF: sqrt(v~_t + eps)
    avg = (v + eps).sqrt() if eps_in_sqrt else v.sqrt() + eps
    if momentum > 0:
        buf = state["momentum_buffer"]
        if lr_in_momentum:
            # TF: b_t <- mu * b_{t-1} + lr * g_t / avg; theta_t <- theta_{t-1} - b_t
            buf.mul_(momentum).addcdiv_(g, avg, value=lr)
            param.copy_(p - buf)
        else:
            # b_t <- mu * b_{t-1} + g_t / avg; theta_t <- theta_{t-1} - lr * b_t
            buf.mul_(momentum).addcdiv_(g, avg)
            param.copy_(p + (-lr) * buf)
    else:
        # theta_t <- theta_{t-1} - lr * g_t / avg
        param.copy_(p.addcdiv(g, avg, value=-lr))
    state["step"] += 1
