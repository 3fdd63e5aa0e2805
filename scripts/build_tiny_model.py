"""Build saescope's embedded tiny model: a byte-level BPE tokenizer and a GPT-2-architecture LM.

Read top to bottom: prepare the corpus, train the tokenizer, train the model, report held-out figures.
Seeds are fixed; the run takes about 45 minutes on a 2-core CPU.

    python scripts/build_tiny_model.py --out src/saescope/assets/tiny/model

The model is saved in fp16 (safetensors) with a GPT-2 tokenizer; saescope loads it in fp32.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from corpus import train_and_held_out

EOT = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int, out: Path) -> GPT2TokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT])
    out.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(out))
    tok = GPT2TokenizerFast(vocab=str(out / "vocab.json"), merges=str(out / "merges.txt"),
                            bos_token=EOT, eos_token=EOT, unk_token=EOT)
    tok.model_max_length = 256
    tok.save_pretrained(out)
    return tok


def encode(tok, text: str) -> torch.Tensor:
    return torch.tensor(tok(text)["input_ids"], dtype=torch.long)


def batches(stream: torch.Tensor, bos: int, ctx: int, batch: int, gen: torch.Generator):
    """Endless random windows, each prefixed with BOS (the way saescope reads with prepend_bos)."""
    while True:
        starts = torch.randint(0, len(stream) - ctx, (batch,), generator=gen)
        windows = torch.stack([stream[s:s + ctx - 1] for s in starts.tolist()])
        yield torch.cat([torch.full((batch, 1), bos), windows], dim=1)


@torch.no_grad()
def held_out_loss(model, stream: torch.Tensor, bos: int, ctx: int) -> tuple[float, int]:
    """Mean next-token loss (nats) over consecutive BOS-prefixed windows; returns (loss, tokens)."""
    model.eval()
    total, count = 0.0, 0
    step = ctx - 1
    for s in range(0, len(stream) - 1, step):
        chunk = stream[s:s + step + 1]
        ids = torch.cat([torch.tensor([bos]), chunk])[None]
        logits = model(ids).logits[0, 1:-1]  # predict chunk[1:] from chunk[:-1] (BOS position skipped)
        target = chunk[1:]
        total += torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum").item()
        count += len(target)
    model.train()
    return total / count, count


def unigram_loss(train: torch.Tensor, held: torch.Tensor, vocab: int) -> float:
    counts = torch.bincount(train, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[held].mean())


def _args_record(args) -> dict:
    record = {k: str(v) for k, v in vars(args).items() if k != "report_only"}
    record["out"] = Path(args.out).as_posix()  # as given on the command line (relative by default)
    return record


def held_out_report(model, tok, parts: dict, train_stream: torch.Tensor, ctx: int) -> dict:
    """Per corpus file: held-out tokens, loss (nats/token), bits per UTF-8 byte, unigram baseline loss."""
    bos, out = tok.bos_token_id, {}
    for name, (_, text) in parts.items():
        stream = encode(tok, text)
        loss, n = held_out_loss(model, stream, bos, ctx)
        bpb = loss * n / math.log(2) / len(text.encode("utf-8"))
        out[name] = {"tokens": n, "loss": round(loss, 4), "bits_per_byte": round(bpb, 4),
                     "unigram_loss": round(unigram_loss(train_stream, stream, len(tok)), 4)}
    return out


def report_only(out: Path) -> None:
    """Re-measure the held-out figures of the saved model on the corpus as the loader prepares it now."""
    model = GPT2LMHeadModel.from_pretrained(out, torch_dtype=torch.float32).eval()
    tok = GPT2TokenizerFast.from_pretrained(out)
    parts = train_and_held_out()
    train_stream = torch.cat([torch.cat([encode(tok, t), torch.tensor([tok.bos_token_id])]) for t, _ in parts.values()])
    path = out / "training_report.json"
    report = json.loads(path.read_text())
    report["held_out"] = held_out_report(model, tok, parts, train_stream, int(report["args"]["ctx"]))
    report["held_out_note"] = "re-measured with --report-only on the corpus as scripts/corpus.py prepares it"
    print(json.dumps(report["held_out"], indent=1))
    path.write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("src/saescope/assets/tiny/model"))
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="keep the saved model; re-measure its held-out figures")
    args = p.parse_args()
    if args.report_only:
        report_only(args.out)
        return
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    parts = train_and_held_out()
    train_texts = [t for t, _ in parts.values()]
    t0 = time.time()
    tok = train_tokenizer(train_texts, args.vocab, args.out)
    bos = tok.bos_token_id
    print(f"tokenizer: {len(tok)} tokens in {time.time() - t0:.0f}s")

    train_stream = torch.cat([torch.cat([encode(tok, t), torch.tensor([bos])]) for t in train_texts])
    held = {name: encode(tok, h) for name, (_, h) in parts.items()}
    print(f"train tokens {len(train_stream):,}; held-out tokens " + ", ".join(f"{k} {len(v):,}" for k, v in held.items()))

    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_ctx=256, n_embd=args.d_model, n_layer=args.layers,
                     n_head=args.heads, n_inner=4 * args.d_model, activation_function="gelu_new",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos, eos_token_id=bos)
    model = GPT2LMHeadModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    gen = torch.Generator().manual_seed(args.seed)
    data = batches(train_stream, bos, args.ctx, args.batch, gen)
    t0 = time.time()
    for step in range(args.steps):
        ids = next(data)
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            el = time.time() - t0
            print(f"step {step:5d} loss {loss.item():.3f} {((step + 1) * ids.numel()) / el:,.0f} tok/s {el / 60:.1f} min", flush=True)
    train_minutes = (time.time() - t0) / 60

    report = {"parameters": n_params, "vocab": len(tok), "train_tokens_seen": args.steps * args.batch * args.ctx,
              "train_minutes": round(train_minutes, 1), "args": _args_record(args)}
    report["held_out"] = held_out_report(model, tok, parts, train_stream, args.ctx)
    print(json.dumps(report, indent=1))
    model.half().save_pretrained(args.out, safe_serialization=True)
    (args.out / "training_report.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
