#!/usr/bin/python3
"""Checks a `raptrctl export --format hf` directory the way transformers would read it: the
model is built from config.json alone (GPT2Config's fields: n_layer, n_head, n_embd, n_inner,
n_positions, vocab_size, activation_function, layer_norm_epsilon, tie_word_embeddings) over the
tensors of model.safetensors, by the PyTorch reference (torch_model.RefModel, which follows HF
GPT-2's conventions: Conv1D weights (in, out), fused c_attn, the head tied to wte), and its logits
must match raptr's own for the same weights and batch (`raptr-worker debug-step` output).

  check_export.py [--transformers] EXPORT_DIR DEBUG_STEP_OUT.safetensors BATCH.safetensors

--transformers: also load the directory with Hugging Face transformers' own
GPT2LMHeadModel.from_pretrained (installed on the GPU machine, not here: scripts/device-check.sh
runs this on the export fixture scripts/device-bundle.sh makes) and check its logits too; exits 3
when transformers is not importable.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from torch_model import RefModel  # noqa: E402

GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "erf"}


def check_transformers(export, inputs, want):
    """Hugging Face's own loader and model over the export: what a user of the export runs."""
    try:
        import transformers
    except ImportError:
        print("SKIP: transformers is not installed")
        sys.exit(3)
    model = transformers.GPT2LMHeadModel.from_pretrained(export, torch_dtype=torch.float32).eval()
    got = model(torch.from_numpy(inputs.astype(np.int64))).logits.double().numpy()
    err = np.max(np.abs(got - want)) / max(1e-12, np.max(np.abs(want)))
    # Both in float32, different operation orders: float32 rounding over a few blocks.
    if not err < 1e-4:
        sys.exit(f"FAIL: transformers {transformers.__version__} GPT2LMHeadModel's logits differ "
                 f"from raptr's by {err:.3g} (relative max)")
    print(f"PASS: transformers {transformers.__version__} GPT2LMHeadModel.from_pretrained loads "
          f"the export unchanged; logits match raptr's to {err:.2e}")


def main():
    args = sys.argv[1:]
    with_transformers = "--transformers" in args
    args = [a for a in args if a != "--transformers"]
    if len(args) != 3:
        sys.exit(__doc__)
    export, raptr_out, batch = args
    with open(os.path.join(export, "config.json")) as f:
        config = json.load(f)
    problems = []
    for key, want in (("model_type", "gpt2"), ("architectures", ["GPT2LMHeadModel"]),
                      ("tie_word_embeddings", True), ("scale_attn_weights", True),
                      ("scale_attn_by_inverse_layer_idx", False)):
        if config.get(key) != want:
            problems.append(f"config.json {key} = {config.get(key)!r}, want {want!r}")
    weights, _ = st.load(os.path.join(export, "model.safetensors"))
    if "lm_head.weight" in weights:
        problems.append("model.safetensors stores lm_head.weight: GPT-2's head is tied to wte")
    shapes = {"wte.weight": (config["vocab_size"], config["n_embd"]),
              "wpe.weight": (config["n_positions"], config["n_embd"]),
              "h.0.mlp.c_fc.weight": (config["n_embd"], config["n_inner"]),
              f"h.{config['n_layer'] - 1}.attn.c_attn.weight": (config["n_embd"],
                                                                  3 * config["n_embd"])}
    for name, shape in shapes.items():
        got = tuple(weights[name].shape) if name in weights else None
        if got != shape:
            problems.append(f"{name}: shape {got}, config.json implies {shape}")
    if f"h.{config['n_layer']}.ln_1.weight" in weights:
        problems.append("more blocks in model.safetensors than config.json's n_layer")
    if problems:
        sys.exit("FAIL: " + "; ".join(problems))
    model = RefModel("gpt", weights, config["n_layer"], config["n_head"],
                     ln_eps=config["layer_norm_epsilon"], gelu=GELU[config["activation_function"]])
    tensors, _ = st.load(batch)
    _, logits = model.forward(tensors["inputs"], tensors["targets"])
    ours, _ = st.load(raptr_out)
    want = ours["logits"].astype(np.float64)
    got = logits.detach().numpy()
    err = np.max(np.abs(got - want)) / max(1e-12, np.max(np.abs(want)))
    # raptr computes in float32, the reference in float64: agreement to float32 rounding over a
    # few blocks, far below what a wrong activation, epsilon or layout would give.
    if not err < 1e-4:
        sys.exit(f"FAIL: exported model's logits differ from raptr's by {err:.3g} (relative max)")
    print(f"PASS: export loads from config.json alone; logits match raptr's to {err:.2e} "
          f"({config['n_layer']} blocks, d {config['n_embd']}, vocab {config['vocab_size']})")
    if with_transformers:
        check_transformers(export, tensors["inputs"], want)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
