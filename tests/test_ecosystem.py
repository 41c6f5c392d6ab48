"""fusedopt inside the training stacks that build the optimizer for you: the
Hugging Face Trainer (given an optimizer, or given a class through
`optimizer_cls_and_kwargs`), Accelerate's `prepare`, and muP's MuAdam. Each
runs twice, once with a fusedopt class and once with torch's, from the same
tiny randomly initialised model and the same data, and the results agree.

Nothing comes from the hub: models are built from configs (HF_HUB_OFFLINE=1
all the same), the data is drawn here, and everything runs on the CPU.
"""

from __future__ import annotations

import os

import fusedopt
import pytest
import torch
from tolerances import tol
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LR = 1e-3
WEIGHT_DECAY = 0.1
STEPS = 4
# The CPU backend steps every param here; against torch.optim.AdamW (fp32)
# the two differ by FMA contraction only (tests/tolerances.py), and the
# differences feed back through the model's forward and backward for
# STEPS steps. Measured normwise: at most 1.4e-7 (Trainer, GPT-2 below).
PARITY = tol("parity_normwise", torch.float32)


def assert_close_normwise(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]):
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        err = (value - theirs[name]).norm() / theirs[name].norm()
        assert err <= PARITY, f"{name}: normwise {err:.3g} > {PARITY:g}"


# --- Hugging Face Trainer ------------------------------------------------------------

N_EMBD = 32


def without_key_bias(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPT-2's params with the key part of each attention's qkv bias left out.
    Its gradient is zero in exact arithmetic (softmax is unchanged by adding
    q . b_k to every score of a row), so what backward gives it is rounding
    noise (~1e-10), which Adam at eps=1e-8 turns into steps of the order of
    lr: once the two runs' params differ by an ulp, so do their noises, and
    those steps (measured: 6.4e-5 of the qkv bias' norm; every other tensor
    within 1.4e-7) compare nothing of the optimizers."""
    return {
        n: torch.cat([p[:N_EMBD], p[2 * N_EMBD :]]) if n.endswith("attn.c_attn.bias") else p
        for n, p in params.items()
    }


def tiny_gpt2(transformers):
    """GPT-2 of 2 layers, width 32, randomly initialised (seed 0), no dropout:
    the two runs of a comparison see the same forward."""
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=N_EMBD,
        n_head=2,
        vocab_size=128,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


class TokenData(torch.utils.data.Dataset):
    """16 sequences of 16 random tokens, the labels the inputs (the model shifts them)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 128, (16, 16), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(transformers, tmp_path, model, **trainer_kwargs):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=TokenData(), **trainer_kwargs
    )
    trainer.train()
    # Trainer hands the optimizer to Accelerate, which wraps it.
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, inner, model


def test_trainer_given_a_fusedopt_optimizer_and_scheduler_trains_as_with_torch(tmp_path):
    transformers = pytest.importorskip("transformers")
    runs = {}
    for cls in (fusedopt.AdamW, torch.optim.AdamW):
        model = tiny_gpt2(transformers)
        opt = cls(fusedopt.param_groups(model, weight_decay=WEIGHT_DECAY), lr=LR)
        sched = transformers.get_linear_schedule_with_warmup(opt, 1, STEPS)
        runs[cls] = train(transformers, tmp_path, model, optimizers=(opt, sched))
    (ours, opt, _), (theirs, _, _) = runs[fusedopt.AdamW], runs[torch.optim.AdamW]
    text = fusedopt.report(opt)
    assert type(opt) is fusedopt.AdamW and "-> cpu" in text
    assert "likely misconfiguration" not in text
    assert_close_normwise(without_key_bias(ours), without_key_bias(theirs))
    start = tiny_gpt2(transformers).state_dict()
    assert all(not torch.equal(p, start[n]) for n, p in ours.items())  # every param moved


def test_trainer_optimizer_cls_and_kwargs_keeps_trainers_no_decay_groups(tmp_path):
    transformers = pytest.importorskip("transformers")
    kwargs = {"lr": LR, "betas": (0.9, 0.99), "eps": 1e-8}
    runs = {}
    for cls in (fusedopt.AdamW, torch.optim.AdamW):
        model = tiny_gpt2(transformers)
        runs[cls] = train(transformers, tmp_path, model, optimizer_cls_and_kwargs=(cls, kwargs))
    (ours, opt, model), (theirs, _, _) = runs[fusedopt.AdamW], runs[torch.optim.AdamW]
    names = {id(p): n for n, p in model.named_parameters()}
    text = fusedopt.report(opt)
    assert type(opt) is fusedopt.AdamW and "-> cpu" in text
    assert "likely misconfiguration" not in text
    # The groups Trainer built: decay on the weight matrices and embeddings
    # (wte, tied to lm_head, listed once), none on biases and LayerNorm gains.
    decayed, kept = opt.param_groups
    assert (decayed["weight_decay"], kept["weight_decay"]) == (WEIGHT_DECAY, 0.0)
    assert all(g["betas"] == (0.9, 0.99) and g["decoupled_weight_decay"] for g in opt.param_groups)
    kept_names = {names[id(p)] for p in kept["params"]}
    assert kept_names == {n for n in ours if n.endswith(".bias") or ".ln_" in n}
    assert {names[id(p)] for p in decayed["params"]} == ours.keys() - kept_names
    # ... which are fusedopt.param_groups' groups for this model.
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [
        [id(p) for p in g["params"]] for g in fusedopt.param_groups(model, WEIGHT_DECAY)
    ]
    assert_close_normwise(without_key_bias(ours), without_key_bias(theirs))


# --- Accelerate ----------------------------------------------------------------------


def test_accelerate_prepare_steps_as_torch_adamw():
    accelerate = pytest.importorskip("accelerate")
    results = {}
    for cls in (fusedopt.AdamW, torch.optim.AdamW):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 1))
        opt = cls(fusedopt.param_groups(model, weight_decay=WEIGHT_DECAY), lr=LR)
        accelerator = accelerate.Accelerator(cpu=True)
        model, opt = accelerator.prepare(model, opt)
        gen = torch.Generator().manual_seed(2)
        for _ in range(STEPS):
            x = torch.randn(4, 8, generator=gen)
            loss = model(x).pow(2).mean()
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
        results[cls] = ({n: p.detach().clone() for n, p in model.named_parameters()}, opt)
    (ours, opt), (theirs, _) = results[fusedopt.AdamW], results[torch.optim.AdamW]
    assert type(opt.optimizer) is fusedopt.AdamW
    assert "-> cpu" in fusedopt.report(opt.optimizer)
    assert_close_normwise(ours, theirs)


# --- muP -----------------------------------------------------------------------------


def mup_mlp(mup, width: int) -> nn.Module:
    """A muP MLP (MuReadout output) of this width, base shapes from widths 8 and 16."""

    def make(w: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(4, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), mup.MuReadout(w, 3)
        )

    torch.manual_seed(0)
    model = make(width)
    mup.set_base_shapes(model, make(8), delta=make(16))
    return model


@pytest.mark.parametrize("width", [8, 64])
def test_mup_gives_fusedopt_adamw_the_same_per_width_lrs_and_trajectory(width):
    """mup.MuAdamW takes no `impl` (it passes impl=AdamW to MuAdam itself):
    MuAdam(params, impl=fusedopt.AdamW) is the fusedopt twin of MuAdamW(params)."""
    mup = pytest.importorskip("mup")
    results = []
    for make_opt in (
        lambda params: mup.MuAdam(params, impl=fusedopt.AdamW, lr=LR, weight_decay=WEIGHT_DECAY),
        lambda params: mup.MuAdamW(params, lr=LR, weight_decay=WEIGHT_DECAY),
    ):
        model = mup_mlp(mup, width)
        opt = make_opt(model.parameters())
        gen = torch.Generator().manual_seed(3)
        for _ in range(STEPS):
            x = torch.randn(8, 4, generator=gen)
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        groups = [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
        results.append((groups, {n: p.detach().clone() for n, p in model.named_parameters()}, opt))
    (groups, ours, opt), (torch_groups, theirs, _) = results
    assert type(opt) is fusedopt.AdamW
    assert groups == torch_groups
    # muP's scaling itself: the hidden matrix (the one weight with two infinite
    # dims) gets lr / width_mult and weight_decay * width_mult.
    width_mult = width / 8
    assert (LR / width_mult, WEIGHT_DECAY * width_mult, 1) in groups
    assert_close_normwise(ours, theirs)


@pytest.mark.parametrize(
    "mode_kwargs,per_step_decay",
    [
        # p *= 1 - lr * wd: mup's lr / m and wd * m cancel, at every width.
        ({"weight_decay_mode": "decoupled"}, lambda m: LR * WEIGHT_DECAY),
        # p *= 1 - wd * lr / lr_max with one lr_max for all groups (the base
        # lr): the lr / m over lr_max cancels wd * m.
        ({"weight_decay_mode": "fully_decoupled", "lr_max": LR}, lambda m: WEIGHT_DECAY),
        # ... but each group's own lr as its lr_max (the default) cancels the
        # 1 / m instead, and the hidden matrix decays m times as fast.
        ({"weight_decay_mode": "fully_decoupled"}, lambda m: WEIGHT_DECAY * m),
    ],
)
@pytest.mark.parametrize("width", [8, 64])
def test_mup_weight_decay_per_width_under_each_decay_mode(mode_kwargs, per_step_decay, width):
    """The decay per step of the hidden matrix under MuAdam's scaling (the
    README's muP note): a zero grad moves p by its decay alone."""
    mup = pytest.importorskip("mup")
    model = mup_mlp(mup, width)
    opt = mup.MuAdam(
        model.parameters(), impl=fusedopt.AdamW, lr=LR, weight_decay=WEIGHT_DECAY, **mode_kwargs
    )
    hidden = model[2].weight
    before = hidden.detach().double()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    expected = before * (1 - per_step_decay(width / 8))
    # fp32 against fp64: the factor 1 - decay is formed in fp32 and the product
    # rounded to fp32; measured at most 8.2e-8 relative over these cases, under
    # one fp32 ulp (2^-23). A wrong scaling is off by a factor of width / 8.
    torch.testing.assert_close(hidden.detach().double(), expected, rtol=2**-23, atol=0)
