"""PyTorch's side of difflab's training-parity harness (docs/training-parity.md).

Reads a folder written by `difflab parity record` (recipe.json, init.safetensors,
inputs.safetensors), replays the recorded steps with PyTorch and diffusers as their own
training scripts do, and writes torch.safetensors beside them for `difflab parity check`:

  loss, grad_norm          [steps] f64: each step's loss (mean over micro-batches) and global
                           gradient norm before clipping
  grad.<name>              each parameter's gradient after step 1's backward passes
  weight.<name>, ema.<name> the weights and their EMA after the last step
  init_max_abs_diff        [1] f64: how far init.safetensors is from the weights PyTorch draws
                           under torch.manual_seed(seed) (only for `init: pytorch`)

The model is diffusers' UNet2DModel (from recipe.json's diffusers config) or a PyTorch port of
difflab's MLP denoiser; the step is DDPMScheduler.add_noise / get_velocity, F.mse_loss (or
l1), Min-SNR-gamma weights as diffusers' train_text_to_image.py computes them, loss.backward(),
clip_grad_norm_, torch.optim.AdamW (or Adam), diffusers' get_scheduler and EMAModel, zero_grad.

usage: python scripts/parity/torch_reference.py DIR   (needs torch==2.13.0, diffusers==0.42.1,
       safetensors; `pip install diffusers safetensors` into difflab's .venv)
"""
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from safetensors.torch import load_file, save_file

ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


class Mlp(nn.Module):
    """difflab's MlpDenoiser: e = MLP_t(sin(t)); h0 = W_in x; h_{i+1} = act(W_i h_i + U_i act(e));
    out = W_out h_L. Modules are constructed in difflab's order (the same draws per seed)."""

    def __init__(self, c):
        super().__init__()
        te = c["time_embedding"]
        self.sin_dim = te.get("sinusoid_dim") or c["hidden"]
        temb = te.get("dim") or c["hidden"]
        self.te = te
        self.act = ACTIVATIONS[c["activation"]]
        self.time_embedding = TimestepEmbedding(self.sin_dim, temb)
        self.input = nn.Linear(c["data_dim"], c["hidden"])
        self.layers = nn.ModuleList(
            nn.ModuleDict(dict(linear=nn.Linear(c["hidden"], c["hidden"]),
                               time_proj=nn.Linear(temb, c["hidden"])))
            for _ in range(c["layers"]))
        self.output = nn.Linear(c["hidden"], c["data_dim"])

    def forward(self, x, t):
        code = get_timestep_embedding(t, self.sin_dim, flip_sin_to_cos=self.te["flip_sin_to_cos"],
                                      downscale_freq_shift=self.te["freq_shift"],
                                      max_period=self.te["max_period"])
        e = self.act(self.time_embedding(code.to(x.dtype)))
        h = self.input(x)
        for layer in self.layers:
            h = self.act(layer["linear"](h) + layer["time_proj"](e))
        return self.output(h)


def build_model(recipe):
    model = recipe["config"]["model"]
    if model["kind"] == "unet":
        cfg = {k: v for k, v in recipe["diffusers_unet"].items() if not k.startswith("_")}
        return UNet2DModel(**cfg), lambda m, x, t, c: m(x, t, class_labels=c).sample
    if model["kind"] == "mlp":
        return Mlp(model), lambda m, x, t, c: m(x, t)
    sys.exit(f"model.kind {model['kind']}: no PyTorch reference")


def scheduler(config):
    s = config["schedule"]
    kind = s["kind"]
    if kind not in BETA_SCHEDULES:
        sys.exit(f"schedule.kind {kind}: no DDPMScheduler equivalent")
    if kind == "cosine" and (s["cosine_s"] != 0.008 or s["max_beta"] != 0.999):
        sys.exit("schedule: DDPMScheduler's squaredcos_cap_v2 has s = 0.008, max_beta = 0.999")
    args = dict(num_train_timesteps=s["timesteps"], beta_schedule=BETA_SCHEDULES[kind],
                prediction_type=PREDICTIONS[config["objective"]],
                rescale_betas_zero_snr=s["zero_terminal_snr"])
    defaults = {"linear": (1e-4, 0.02), "scaled_linear": (8.5e-4, 0.012), "sigmoid": (1e-4, 0.02)}
    if kind in defaults:
        args["beta_start"] = s.get("beta_start", defaults[kind][0])
        args["beta_end"] = s.get("beta_end", defaults[kind][1])
    return DDPMScheduler(**args)


def loss_of(pred, target, t, sched, training, objective):
    """diffusers' train_text_to_image.py: F.mse_loss(reduction="mean") without Min-SNR, else
    per-sample means weighted by min(snr, gamma) / snr (eps), / (snr + 1) (v), x0: min(snr, gamma)."""
    kind = training.get("loss") or "mse"
    elementwise = F.mse_loss if kind == "mse" else F.l1_loss
    gamma = training.get("min_snr_gamma")
    if gamma is None:
        return elementwise(pred.float(), target.float(), reduction="mean")
    snr = compute_snr(sched, t)
    w = torch.stack([snr, gamma * torch.ones_like(t)], dim=1).min(dim=1)[0]
    if objective == "eps":
        w = w / snr
    elif objective == "v":
        w = w / (snr + 1)
    loss = elementwise(pred.float(), target.float(), reduction="none")
    return (loss.mean(dim=list(range(1, loss.ndim))) * w).mean()


def lr_scheduler(opt, training):
    lr = training["lr_schedule"]
    name = {"constant": "constant_with_warmup", "cosine": "cosine"}.get(lr["schedule"])
    if name is None or lr["min_lr_ratio"] != 0:
        sys.exit("lr_schedule: get_scheduler has constant or cosine (to 0) after warmup")
    return get_scheduler(name, opt, num_warmup_steps=lr["warmup_steps"],
                         num_training_steps=training["steps"])


def main(d):
    recipe = json.load(open(os.path.join(d, "recipe.json")))
    config, training = recipe["config"], recipe["config"]["training"]
    torch.manual_seed(config["seed"])
    model, forward = build_model(recipe)
    drawn = {k: v.clone() for k, v in model.state_dict().items()}
    init = load_file(os.path.join(d, "init.safetensors"))
    missing, unexpected = model.load_state_dict(init, strict=True), None
    out = {}
    if config["model"].get("init", "pytorch") == "pytorch":
        out["init_max_abs_diff"] = torch.tensor([max(
            (drawn[k] - init[k]).abs().max().item() for k in drawn)], dtype=torch.float64)
    inputs = load_file(os.path.join(d, "inputs.safetensors"))
    sched = scheduler(config)
    o = training["optimizer"]
    params = [p for p in model.parameters()]
    opt_cls = torch.optim.AdamW if o["kind"] == "adamw" else torch.optim.Adam
    opt = opt_cls(params, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                  weight_decay=o["weight_decay"])
    lr_sched = lr_scheduler(opt, training)
    e = training["ema"]
    if e["update_every"] != 1 or (not e["warmup"] and e["decay"] > 0):
        sys.exit("ema: EMAModel needs update_every 1 and warmup (or decay 0)")
    ema = EMAModel(params, decay=e["decay"], min_decay=e["min_decay"],
                   update_after_step=e["start_step"], use_ema_warmup=True,
                   inv_gamma=e["inv_gamma"], power=e["power"])
    accum = training["grad_accum"]
    max_norm = training["grad_clip"] if training["grad_clip"] > 0 else math.inf
    losses, norms = [], []
    model.train()
    for step in range(recipe["steps"]):
        total = 0.0
        for micro in range(accum):
            p = f"step{step}.micro{micro}."
            x0, t, noise = inputs[p + "x0"], inputs[p + "t"], inputs[p + "noise"]
            labels = inputs.get(p + "class_labels")
            x_t = sched.add_noise(x0, noise, t)
            target = {"eps": noise, "x0": x0}.get(config["objective"])
            if target is None:
                target = sched.get_velocity(x0, noise, t)
            loss = loss_of(forward(model, x_t, t, labels), target, t, sched, training,
                           config["objective"])
            (loss / accum).backward()
            total += loss.item()
        if step == 0:
            for name, param in model.named_parameters():
                out["grad." + name] = param.grad.detach().clone()
        norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm).item())
        losses.append(total / accum)
        opt.step()
        lr_sched.step()
        ema.step(params)
        opt.zero_grad()
    out["loss"] = torch.tensor(losses, dtype=torch.float64)
    out["grad_norm"] = torch.tensor(norms, dtype=torch.float64)
    for name, param in model.named_parameters():
        out["weight." + name] = param.detach().clone()
    ema.copy_to(params)
    for name, param in model.named_parameters():
        out["ema." + name] = param.detach().clone()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(d, "torch.safetensors"))
    print(f"{d}: {recipe['steps']} steps, losses {[round(l, 6) for l in losses]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    main(sys.argv[1])
