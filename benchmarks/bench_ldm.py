"""Speed of the latent-diffusion stage against the bare UNet it is built on.

Models are built (random weights) from a config's ``vae``/``ldm``/``sampling`` sections (default:
the CPU demo config), then, in one process:

1. Sampling: time per synthetic patch of the guided DDIM loop (``guided_ddim``: one UNet call per
   step on the [cond, uncond] batch) vs ``steps`` x one bare UNet forward on the same 2B batch
   (target ratio <= 1.15), and the full ``sample_images`` (context, DDIM, VAE decode, uint8).
2. Training: one LDM step on cached latents (``draw_batch`` + ``training_step``: noise, DDPM
   target, CFG drop, forward, backward, clipping, AdamW, LR schedule, EMA) vs a bare UNet
   forward + backward on the same batch (target ratio <= 1.2).
3. Synthetic patches/s of the SSL and class arms (full ``sample_images``).

Prints the figures; asserts nothing::

    python benchmarks/bench_ldm.py                       # demo sizes, 2 threads
    python benchmarks/bench_ldm.py --config config/config.yaml --device cuda   # paper sizes on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_sections(path: Path) -> dict:
    """config.yaml's sections updated with those of ``path`` (as ``--configfile`` would)."""
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    if path.resolve() != (ROOT / "config" / "config.yaml").resolve():
        for key, value in (yaml.safe_load(path.read_text()) or {}).items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return {k: base.get(k, {}) for k in ("vae", "ldm", "sampling")}


def paired(fns: dict, repeats: int, sync) -> dict:
    """Best (minimum) wall time of each function over ``repeats`` rounds, as ``timeit`` reports: on
    a shared machine the least-disturbed run is the best estimate. The functions run interleaved
    (a, b, c, b, c, a, ...) after one warm-up round, so slow phases of the machine hit them alike."""
    times = {name: [] for name in fns}
    order = list(fns.items())
    for i in range(repeats + 1):
        for name, fn in order[i % len(order):] + order[: i % len(order)]:  # rotated: no fixed order effects
            start = time.perf_counter()
            fn()
            sync()
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main(argv=None) -> None:
    from diffusers import DDIMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from duvflow.core.config import from_dict
    from duvflow.ldm.conditioning import ConditionEncoder
    from duvflow.ldm.config import LdmConfig, SamplingConfig, VaeConfig
    from duvflow.ldm.model import build_noise_scheduler, build_unet, guided_ddim
    from duvflow.ldm.sample import sample_images
    from duvflow.ldm.train import draw_batch, training_step
    from duvflow.ldm.vae import build_vae

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the paper's)")
    parser.add_argument("--batch", type=int, default=None, help="synthetic patches per sampling batch (B)")
    parser.add_argument("--train-batch", type=int, default=None, help="LDM training batch (default ldm.batch_size)")
    parser.add_argument("--embed-dim", type=int, default=384, help="SSL embedding width (ViT-S: 384)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # figures appear as they are measured

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sections = load_sections(args.config)
    vcfg = from_dict(VaeConfig, sections["vae"], "vae")
    lcfg = from_dict(LdmConfig, {**sections["ldm"], "device": args.device}, "ldm")
    scfg = from_dict(SamplingConfig, sections["sampling"], "sampling")
    B = args.batch or min(scfg.batch_size, 16 if device.type == "cpu" else scfg.batch_size)
    TB = args.train_batch or lcfg.batch_size
    size = vcfg.image_size // 2 ** (len(vcfg.block_out_channels) - 1)
    C = vcfg.latent_channels

    vae = build_vae(vcfg).to(device).eval().requires_grad_(False)
    unet = build_unet(lcfg, C, size).to(device)
    encoders = {kind: ConditionEncoder(kind=kind, cross_attention_dim=lcfg.cross_attention_dim,
                                       num_tokens=lcfg.num_tokens, embed_dim=args.embed_dim if kind == "ssl" else None,
                                       null_condition=lcfg.null_condition).to(device) for kind in ("ssl", "class")}
    n_params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"config {args.config.name}: {vcfg.image_size} px images, latents {C}x{size}x{size}, UNet "
          f"{n_params:.2f} M parameters, {args.threads} thread(s), device {device}")

    # 1. sampling ------------------------------------------------------------------------------
    unet.eval().requires_grad_(False)
    enc = encoders["ssl"].eval()
    conds = torch.randn(B, args.embed_dim)
    noise = torch.randn(B, C, size, size, device=device)
    ddim = DDIMScheduler.from_config(build_noise_scheduler(lcfg).config)
    ddim.set_timesteps(args.steps, device=device)
    timesteps = ddim.timesteps.clone()
    # the bare reference sees the same inputs: the [cond, uncond] batch at the same timesteps
    x2 = torch.cat([noise, noise])
    with torch.no_grad():
        ctx2 = torch.cat([enc(conds.to(device)), enc.null(B)])

    def bare_sampling():
        with torch.no_grad():
            for t in timesteps:
                unet(x2, t, ctx2, return_dict=False)

    def guided():
        with torch.no_grad():
            guided_ddim(unet, enc(conds.to(device)), enc.null(B), noise, ddim, args.steps, scfg.guidance)

    def full(kind):
        labels = torch.randint(0, 2, (B,))
        c = conds if kind == "ssl" else labels
        return lambda: sample_images(unet, encoders[kind].eval(), vae, ddim, c, range(B), steps=args.steps,
                                     guidance=scfg.guidance, latent_shape=(C, size, size), device=device)

    class _NoUNet(torch.nn.Module):
        """Stands in for the UNet to time what the sampler adds around it (cat, CFG, DDIM step)."""

        def forward(self, x, t, context, return_dict=False):
            return (x * 0.5,)

    def loop_only():
        with torch.no_grad():
            guided_ddim(_NoUNet(), ctx2[:B], ctx2[B:], noise, ddim, args.steps, scfg.guidance)

    t = paired({"bare": bare_sampling, "guided": guided, "ssl": full("ssl"), "class": full("class"),
                "loop": loop_only}, args.repeats, sync)
    t_bare, t_guided, t_full = t["bare"], t["guided"], {"ssl": t["ssl"], "class": t["class"]}
    print(f"\nSampling, B = {B} synthetic patches per batch (UNet batch 2B = {2 * B}), {args.steps} DDIM steps, "
          f"guidance {scfg.guidance}")
    print(f"  bare: {args.steps} x UNet forward on 2B     {t_bare / B * 1e3:9.2f} ms / patch")
    print(f"  guided_ddim (CFG, one call per step)   {t_guided / B * 1e3:9.2f} ms / patch   "
          f"ratio {t_guided / t_bare:.3f}  (target <= 1.15)")
    print(f"  sample_images incl. VAE decode (ssl)   {t_full['ssl'] / B * 1e3:9.2f} ms / patch   "
          f"ratio {t_full['ssl'] / t_bare:.3f}")
    print(f"  sampler work around the UNet (stub UNet): {t['loop'] / args.steps * 1e3:.3f} ms / step = "
          f"{t['loop'] / t_bare * 100:.1f}% of the bare UNet time (the ratio's floor is 1 + this)")

    # 2. training --------------------------------------------------------------------------------
    unet.train().requires_grad_(True)
    enc = encoders["ssl"].train()
    params = [*unet.parameters(), *enc.parameters()]
    ema = EMAModel(params, decay=lcfg.ema_decay, use_ema_warmup=lcfg.ema_warmup, power=3 / 4, foreach=True)
    opt = torch.optim.AdamW(params, lr=lcfg.lr, weight_decay=lcfg.weight_decay, fused=device.type in ("cuda", "cpu"))
    sched = get_scheduler(lcfg.lr_schedule, opt, num_warmup_steps=lcfg.warmup_steps, num_training_steps=10**6)
    noise_sched = build_noise_scheduler(lcfg)
    n_cache = max(4 * TB, 256)
    mean, std = torch.randn(n_cache, C, size, size), torch.rand(n_cache, C, size, size) * 0.1
    cache_conds = torch.randn(n_cache, args.embed_dim)
    gen = torch.Generator().manual_seed(0)
    z_b = torch.randn(TB, C, size, size, device=device)
    t_b = torch.randint(0, lcfg.num_train_timesteps, (TB,), device=device)
    ctx_b = torch.randn(TB, lcfg.num_tokens, lcfg.cross_attention_dim, device=device)

    def bare_train():
        out = unet(z_b, t_b, ctx_b, return_dict=False)[0]
        torch.nn.functional.mse_loss(out, z_b).backward()
        for p in unet.parameters():
            p.grad = None

    def ours_train():
        rows = torch.randint(0, n_cache, (TB,), generator=gen)
        batch = draw_batch(mean, std, cache_conds, rows, lcfg, gen)
        training_step(unet, enc, noise_sched, opt, sched, ema, params, batch, lcfg, device).item()

    t = paired({"bare": bare_train, "ours": ours_train}, args.repeats * 4, sync)
    t_bare_train, t_ours_train = t["bare"], t["ours"]
    print(f"\nTraining, batch {TB} of cached latents")
    print(f"  bare UNet forward + backward           {t_bare_train * 1e3:9.2f} ms / step")
    print(f"  LDM train step (draw, loss, clip, AdamW, schedule, EMA) {t_ours_train * 1e3:9.2f} ms / step   "
          f"ratio {t_ours_train / t_bare_train:.3f}  (target <= 1.2)")
    print(f"  {TB / t_ours_train:.1f} latents / s")

    # 3. throughput ----------------------------------------------------------------------------
    print(f"\nSynthetic patches / s ({args.steps} DDIM steps, incl. decode): "
          f"ssl {B / t_full['ssl']:.2f}, class {B / t_full['class']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
