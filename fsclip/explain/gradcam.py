"""``fsclip-explain gradcam``: Smooth Grad-CAM++ of a class through a method's whole model (SAFE Fig. 7).

Grad-CAM++ (Chattopadhyay et al. 2018) of class c at a layer with activations A^k (channel k,
position ij), with g = dY^c / dA^k_ij the gradient of the class's logit Y^c:

    alpha^kc_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3)          (0 where the denominator is 0)
    w^c_k       = sum_ij alpha^kc_ij ReLU(g_ij)
    L^c         = ReLU(sum_k w^c_k A^k)

Smooth Grad-CAM++ (Omeiza et al. 2019) draws ``--samples`` noisy copies x + eps, eps ~ N(0,
sigma^2) with sigma = ``--noise`` x (max x - min x) per image (SmoothGrad's convention), and puts
the means of g, g^2 and g^3 over the copies in place of g, g^2, g^3 above; A^k is the clean
image's (as torch-cam does; the paper's choice is not stated). One sample without noise is plain
Grad-CAM++ (tested against the ``grad-cam`` package).

The logits are the method's own (the ``image_logits`` hook: for SAFE the blended pools, for
VT-CLIP the decoder, for DPT the prompted encoder), so the map explains the trained model, and
CLIP's (``--zero-shot``) sits beside it. Target layers (``--layer``, a module path in CLIP's image
encoder): ResNet ``layer4`` (default), ViT the patch tokens entering the last block, i.e. the
output of block ``transformer.resblocks.<depth-2>`` reshaped to the patch grid (the last block's
own patch outputs get no gradient: CLIP reads only its class token). ``--target pred`` (default),
``true`` or a class name.

What the ``grad-cam`` package (pytorch-grad-cam) does here: its ``ActivationsAndGradients``
captures the layer's activations and the gradients reaching them, with a reshape transform for
ViT tokens. What is written here, and why: the SmoothGrad averaging and the weights from the
averaged moments. The package has no Smooth Grad-CAM++ (its ``aug_smooth`` is flip-and-scale
test-time augmentation, not noise), and its ``GradCAMPlusPlus`` computes its weights from one
gradient raised to powers, which cannot take the means of g^2 and g^3 over noisy copies (the
mean of g, squared, is not the mean of g^2).

Writes ``gradcam.png`` (image | one overlay per model, maps min-max scaled per map), ``gradcam.npz``
(the raw maps on the layer's grid) and ``gradcam.json``.
"""

from __future__ import annotations

import argparse
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fsclip.errors import ConfigError

Forward = Callable[[Any], Any]  # images [N, 3, H, W] -> logits [N, K], with gradients


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser("gradcam", parents=list(parents),
                              help="Smooth Grad-CAM++ of a class through the method's whole model (SAFE Fig. 7)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--layer", default="",
                   help="target layer, a module path in CLIP's image encoder (default: ResNet layer4; ViT the "
                        "patch tokens entering the last block, transformer.resblocks.<depth-2>)")
    p.add_argument("--target", default="pred",
                   help="class explained: pred (each model's prediction, default), true, or a class name")
    p.add_argument("--samples", type=int, default=25, help="noisy copies per image (1 with --noise 0: Grad-CAM++)")
    p.add_argument("--noise", type=float, default=0.15,
                   help="noise std as a fraction of each image's value range (SmoothGrad: 0.1-0.2)")
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------------ the maps
def default_layer(visual: Any) -> str:
    """``layer4`` (ResNet) or the block whose output enters the last ViT block."""
    from fsclip.clip.features import is_vit

    if not is_vit(visual):
        return "layer4"
    depth = len(visual.transformer.resblocks)
    if depth < 2:
        raise ConfigError("this ViT has one block; pass --layer (e.g. conv1)")
    return f"transformer.resblocks.{depth - 2}"


def resolve_layer(visual: Any, path: str) -> Any:
    """The module at ``path`` in ``visual`` (one ConfigError listing the top-level ones if absent)."""
    try:
        return visual.get_submodule(path)
    except AttributeError:
        names = ", ".join(n for n, _ in visual.named_children())
        raise ConfigError(f"--layer {path} is not a module of this image encoder; its modules: {names} "
                          f"(nested with dots, e.g. transformer.resblocks.0)") from None


def token_grid(visual: Any) -> Callable[[Any], Any]:
    """Sequence-first ViT tokens ``[L, B, width]`` (class token, the patches, then any prompts)
    -> ``[B, width, h, w]`` patch maps; a ``[B, C, h, w]`` map (ResNet) passes as it is."""
    pos = getattr(visual, "positional_embedding", None)
    hw = int(pos.shape[0]) - 1 if pos is not None else 0
    side = int(round(hw ** 0.5))

    def reshape(t: Any) -> Any:
        if t.dim() == 4:
            return t
        if t.dim() != 3 or not hw:
            raise ConfigError(f"--layer gives a {tuple(t.shape)} output; choose a layer with a [B, C, h, w] map "
                              f"or ViT tokens")
        patches = t.permute(1, 0, 2)[:, 1:1 + hw]  # [B, HW, width]
        return patches.transpose(1, 2).reshape(t.shape[1], -1, side, side)

    return reshape


def smooth_gradcam_pp(forward: Forward, layer: Any, images: Any, targets: Any, samples: int = 25,
                      noise: float = 0.15, reshape: Optional[Callable[[Any], Any]] = None,
                      generator: Any = None, layer_name: str = "", eps: float = 0.0) -> Any:
    """Smooth Grad-CAM++ maps ``[N, h, w]`` (float32, on the CPU, not rescaled) of class
    ``targets[i]`` for each image ``images[i]`` at ``layer`` (module docstring). ``reshape`` turns
    the layer's output into ``[N, C, h, w]``; ``generator`` draws the noise (CPU); ``layer_name``
    names the layer in errors; ``eps`` is added to the denominator of alpha (0: the formula; the
    grad-cam package adds 1e-6, which matters where g^2 is below it)."""
    import torch
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    if noise < 0:
        raise ConfigError(f"--noise must be >= 0, got {noise}")
    images = images.detach()
    targets = torch.as_tensor(targets, device=images.device).long()
    span = (images.flatten(1).amax(dim=1) - images.flatten(1).amin(dim=1)).view(-1, 1, 1, 1)  # [N, 1, 1, 1]
    grabber = ActivationsAndGradients(forward, [layer], reshape, detach=True)
    try:
        def pass_(x: Any) -> Tuple[Any, Any]:
            x = x.clone().requires_grad_(True)
            logits = grabber(x)
            if not grabber.activations:
                raise ConfigError(f"--layer {layer_name or type(layer).__name__} is not run by this model's forward (a method "
                                  f"may run a copy of it, as SAFE's fine-tuned pool); pass another --layer")
            score = logits[torch.arange(len(targets), device=logits.device), targets].sum()
            torch.autograd.grad(score, x)  # the layer's gradient reaches the grabber's hook
            return grabber.activations[-1].float(), grabber.gradients[-1].float()  # [N, C, h, w] each

        activations, _ = pass_(images)  # A^k from the clean images
        d1 = d2 = d3 = 0.0
        for _ in range(samples):
            shift = torch.randn(images.shape, generator=generator).to(images) * noise * span if noise > 0 else 0.0
            _, g = pass_(images + shift)  # x + eps, eps ~ N(0, sigma^2)
            d1, d2, d3 = d1 + g, d2 + g ** 2, d3 + g ** 3
    finally:
        grabber.release()
    return gradcam_pp_from_moments(activations, d1 / samples, d2 / samples, d3 / samples, eps)


def gradcam_pp_from_moments(a: Any, d1: Any, d2: Any, d3: Any, eps: float = 0.0) -> Any:
    """Grad-CAM++ ``[N, h, w]`` from activations ``a`` ``[N, C, h, w]`` and the (mean) first,
    second and third powers of the gradient (module docstring); ``eps``: see ``smooth_gradcam_pp``."""
    import torch

    denom = 2 * d2 + a.sum(dim=(2, 3), keepdim=True) * d3 + eps
    alpha = torch.where((denom != 0) & (d2 != 0), d2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(denom))
    weights = (alpha * torch.relu(d1)).sum(dim=(2, 3), keepdim=True)  # w^c_k: [N, C, 1, 1]
    return torch.relu((weights * a).sum(dim=1))  # [N, h, w]


# ------------------------------------------------------------------------------ the command
def choose_targets(target: str, logits: Any, labels: Optional[List[int]], classnames: List[str]) -> List[int]:
    """The class explained for each image (``--target``)."""
    if target == "pred":
        return [int(c) for c in logits.argmax(dim=1)]
    if target == "true":
        if labels is None:
            raise ConfigError("--target true needs the images' classes: pass --classes NAME ... with --images, "
                              "or --dataset images")
        return list(labels)
    if target not in classnames:
        from fsclip.engine.registry import did_you_mean

        raise ConfigError(f'--target "{target}" is not a class of this dataset (nor pred / true)'
                          + did_you_mean(target, classnames))
    return [classnames.index(target)] * logits.shape[0]


def run(args: Any) -> int:
    import torch

    from fsclip.explain import panels
    from fsclip.explain.hooks import require_hook
    from fsclip.explain.source import load_images, load_subjects

    subjects = load_subjects(args)
    for s in subjects:
        require_hook(s.trainer, "image_logits", "gradient-enabled logits", s.label)
    columns: List[panels.Column] = []
    arrays: Dict[str, np.ndarray] = {}
    summary: Dict[str, Any] = {}
    display = rows = None
    for s in subjects:
        images = load_images(args, s)
        if display is None:
            display, rows = images.display, images.names()
        path = args.layer or default_layer(s.visual)
        layer = resolve_layer(s.visual, path)
        with torch.no_grad():
            probs = s.trainer.image_logits(images.tensor).float().softmax(dim=1)
        targets = choose_targets(args.target, probs, images.labels, s.classnames)
        gen = torch.Generator().manual_seed(int(args.seed))
        maps = smooth_gradcam_pp(s.trainer.image_logits, layer, images.tensor, targets, args.samples, args.noise,
                                 token_grid(s.visual), gen, path).numpy()
        pred = probs.argmax(dim=1).tolist()
        subtitles = [f"target {s.classnames[c]} (p={probs[i, c]:.2f})" + ("" if c == pred[i] else
                     f"\npred {s.classnames[pred[i]]}") for i, c in enumerate(targets)]
        columns.append(panels.Column(s.label, maps=maps, subtitles=subtitles))
        arrays[s.label] = maps
        summary[s.label] = {"run": s.run_dir, "trainer": s.cfg.TRAINER.NAME, "layer": path,
                            "targets": [s.classnames[c] for c in targets],
                            "target_probability": [float(probs[i, c]) for i, c in enumerate(targets)],
                            "predicted": [s.classnames[c] for c in pred], "grid": list(maps.shape[1:])}
    what = {"pred": "the predicted class", "true": "the true class"}.get(args.target, args.target)
    png = panels.save_overlay_panel(
        osp.join(args.out, "gradcam.png"), display, columns, row_labels=rows,
        title=f"Smooth Grad-CAM++ of {what} ({args.samples} samples, noise {args.noise:g})",
        colorbar_label="Smooth Grad-CAM++ (min-max per map)")
    panels.write_npz(osp.join(args.out, "gradcam.npz"), **arrays)
    panels.write_json(osp.join(args.out, "gradcam.json"), {
        "technique": "gradcam", "method": "Smooth Grad-CAM++", "samples": args.samples, "noise": args.noise,
        "seed": args.seed, "target": args.target, "images": list(rows or []), "models": summary})
    print(f"Wrote {png} (+ gradcam.npz, gradcam.json)")
    return 0
