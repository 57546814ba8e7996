"""Where in depth does a model look at the needle? The last token's attention to the answer's first token.

    python benchmarks/needle_attention_by_layer.py --tokens 6000 --out benchmarks/results/needle_attention_smollm2_6k.md

Runs the unmodified model once and, per layer, ranks the needle's answer token among all tokens by
the last token's attention (mean over heads, as the PAP probe scores it). Layers where it ranks low
are layers where PAP cannot know yet that the needle matters.
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch

from spts.adapters import adapter_for
from spts.data.haystack import build_needle_prompt, prompt_input_ids
from spts.policies import probe_layer_input
from spts.zoo import load_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model, tokenizer = load_pretrained(args.model)
    adapter = adapter_for(model)
    prompt = build_needle_prompt(tokenizer, args.tokens, depth=0.5, seed=args.seed)
    ids = prompt_input_ids(tokenizer, prompt)[0]
    answer_ids = tokenizer(" " + prompt.answer, add_special_tokens=False).input_ids
    needle_pos = next(i for i in range(len(ids)) if ids[i : i + len(answer_ids)].tolist() == answer_ids)
    rows = []

    def probe(layer, args_, kwargs, idx):
        hidden = args_[0] if args_ else kwargs["hidden_states"]
        scores = probe_layer_input(adapter, layer, hidden, kwargs["position_embeddings"])[0]
        rank = int((scores > scores[needle_pos]).sum())
        rows.append((idx, rank, float(scores[needle_pos]), float(scores[0])))

    handles = [
        layer.register_forward_pre_hook(lambda m, a, k, idx=idx: probe(m, a, k, idx), with_kwargs=True)
        for idx, layer in enumerate(adapter.layers())
    ]
    with torch.inference_mode():
        model(ids[None], use_cache=False, logits_to_keep=1)
    for handle in handles:
        handle.remove()

    lines = [
        f"Last-token attention to the needle's answer token, {args.model}, {len(ids)}-token prompt "
        f"(seed {args.seed}, depth 0.5, answer token at position {needle_pos}). "
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()} CPU, torch {torch.__version__}.",
        f"Command: `python benchmarks/needle_attention_by_layer.py --tokens {args.tokens} --out {args.out}`",
        "",
        "| layer | rank of the answer token (0 = top) | its mean attention | attention on token 0 |",
        "|---|---|---|---|",
        *(f"| {i} | {rank} | {w:.4f} | {sink:.3f} |" for i, rank, w, sink in rows),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
