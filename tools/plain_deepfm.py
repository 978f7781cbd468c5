"""A plain-PyTorch DeepFM baseline on a processed ctr dataset: what ``ctr-train`` is compared with.

No TorchRec, no CowClip, no L2, no warm-up: what a new user writes in ~100 lines, with the
same architecture and knobs as ``ctr-train --model deepfm --scaling none --l2 0``::

    ids [B, F] + field offsets ─▶ nn.Embedding(Σ V, D, sparse=True) ─▶ emb [B, F, D] ─┬─▶ FM ─────────┐
                               └▶ nn.Embedding(Σ V, 1, sparse=True) ─▶ Σ_f ─▶ first order ───────────┤
    dense [B, 13] ─┬─▶ Linear(13, 1, bias=False) ───────────────────────────────────────────────────┤
                   └─ concat(flatten(emb), dense) ─▶ (Linear ─▶ ReLU) x 3 ─▶ Linear(·, 1, bias=False) ─┤
                                                                           + bias (zero) ─▶ logit ┘

- tables: one fused ``nn.Embedding`` per kind (every field's rows end to end), both ``N(0,
  --init-std)``, trained by ``torch.optim.SparseAdam`` (lazy: only the rows in the batch, and
  their moments, change at a step);
- dense layers: ``torch.optim.Adam``; PyTorch's default ``nn.Linear`` init (``--dnn-init torch``)
  or DeepCTR's glorot-normal kernels with zero biases (``--dnn-init glorot_normal``, ctr's default);
- batches: the train split read by :class:`ctr.data.loader.SplitTensors` and shuffled by the
  same seeded permutation as ctr's ``BatchLoader`` (``--seed``), so both see the same batches;
  the last partial batch is kept (``--drop-last`` drops it), as in ctr;
- mean BCE on logits; test AUC and logloss on the whole test split after the last epoch.

Screening switches, each makes one detail ctr's (defaults: the plain baseline's):
``--table-adam dense`` trains the tables with ``torch.optim.Adam`` on dense gradients, so every
row's moments decay and every row with non-zero moments moves at every step (ctr's
``CTROptimizer``); ``--adam-eps 1e-7 --adam-eps-form keras`` is ctr's (Keras') epsilon on both
groups; ``--first-order-init zero`` starts the first-order table at zero, as ctr does.

Usage::

    python tools/plain_deepfm.py --data /tmp/parity/data --batch 1k --epochs 1 \\
        --dense-lr 1e-3 --embedding-lr 1e-3 --init-std 1e-4 --dnn-init torch

Prints test AUC, logloss, training and wall time, and the command (``--json`` writes them too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctr.data.dataset import DatasetError, read_schema  # noqa: E402
from ctr.data.loader import BatchLoader, SplitTensors  # noqa: E402
from ctr.metrics import click_metrics  # noqa: E402
from ctr.models.layers import glorot_normal_  # noqa: E402
from ctr.optim.scaling import parse_batch  # noqa: E402

BETAS = (0.9, 0.999)


class PlainDeepFM(nn.Module):
    def __init__(self, vocab: list[int], num_dense: int, dim: int, mlp: list[int], init_std: float,
                 dnn_init: str, first_order_init: str, sparse_grad: bool):
        super().__init__()
        self.register_buffer("offsets", torch.tensor(np.cumsum([0] + vocab[:-1]), dtype=torch.long))
        rows, self.num_fields, self.dim = sum(vocab), len(vocab), dim
        self.emb = nn.Embedding(rows, dim, sparse=sparse_grad)
        self.first = nn.Embedding(rows, 1, sparse=sparse_grad)
        nn.init.normal_(self.emb.weight, 0.0, init_std)
        if first_order_init == "zero":
            nn.init.zeros_(self.first.weight)
        else:
            nn.init.normal_(self.first.weight, 0.0, init_std)
        self.dense_linear = nn.Linear(num_dense, 1, bias=False)
        layers, d = [], len(vocab) * dim + num_dense
        for h in mlp:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.dnn = nn.Sequential(*layers)
        self.out = nn.Linear(d, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(1))
        if dnn_init == "glorot_normal":  # DeepCTR / Keras: normal truncated at 2 std, rescaled; zero bias
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    glorot_normal_(m.weight, m.in_features, m.out_features)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        rows = ids.long() + self.offsets
        emb = self.emb(rows)                                              # [B, F, D]
        fm = 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1)).sum(1)
        deep = self.out(self.dnn(torch.cat([emb.flatten(1), dense], 1))).squeeze(1)
        first = self.first(rows).sum((1, 2)) + self.dense_linear(dense).squeeze(1)
        return first + fm + deep + self.bias


@torch.no_grad()
def evaluate(model: nn.Module, data: SplitTensors, batch: int) -> dict[str, float]:
    model.eval()
    probs = []
    for lo in range(0, data.num_rows, batch):
        idx = torch.arange(lo, min(lo + batch, data.num_rows))
        ids, dense, _ = data.gather(idx)
        probs.append(torch.sigmoid(model(ids, dense)))
    model.train()
    m = click_metrics(data.labels.numpy(), torch.cat(probs).double().numpy())   # ctr-train's metrics
    return {"auc": float(m["auc"]), "logloss": float(m["logloss"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="processed ctr dataset (ctr-preprocess output)")
    ap.add_argument("--batch", default="1k", help="batch size (k = 1024, as ctr-train)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--dense-lr", type=float, default=1e-3)
    ap.add_argument("--embedding-lr", type=float, default=1e-3)
    ap.add_argument("--init-std", type=float, default=1e-4)
    ap.add_argument("--embedding-dim", type=int, default=10)
    ap.add_argument("--mlp", default="400,400,400")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dnn-init", choices=("torch", "glorot_normal"), default="torch")
    ap.add_argument("--drop-last", action="store_true")
    ap.add_argument("--eval-batch", default="16k")
    ap.add_argument("--max-steps", type=int, help="stop after this many steps (screening)")
    ap.add_argument("--table-adam", choices=("lazy", "dense"), default="lazy",
                    help="lazy: SparseAdam; dense: Adam on full-table gradients (ctr's)")
    ap.add_argument("--adam-eps", type=float, default=1e-8)
    ap.add_argument("--adam-eps-form", choices=("torch", "keras"), default="torch",
                    help="keras: eps added before the bias correction (ctr's default, with 1e-7)")
    ap.add_argument("--first-order-init", choices=("normal", "zero"), default="normal")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    t_start = time.time()
    torch.set_flush_denormal(True)  # as ctr-train on CPU: denormal moments slow steps, change nothing
    try:
        dataset = read_schema(args.data)
        train, test = SplitTensors.load(dataset, "train"), SplitTensors.load(dataset, "test")
    except DatasetError as e:
        print(f"plain_deepfm: {e}", file=sys.stderr)
        return 2
    vocab = [dataset.vocab_sizes[f] for f in train.sparse_fields]
    batch = parse_batch(args.batch)
    torch.manual_seed(args.seed)
    model = PlainDeepFM(vocab, len(train.dense_fields), args.embedding_dim,
                        [int(h) for h in args.mlp.split(",") if h], args.init_std, args.dnn_init,
                        args.first_order_init, sparse_grad=args.table_adam == "lazy")
    tables = [model.emb.weight, model.first.weight]
    dense = [p for n, p in model.named_parameters() if not n.startswith(("emb.", "first."))]
    opt_t = (torch.optim.SparseAdam(tables, lr=args.embedding_lr, betas=BETAS, eps=args.adam_eps)
             if args.table_adam == "lazy" else
             torch.optim.Adam(tables, lr=args.embedding_lr, betas=BETAS, eps=args.adam_eps, fused=True))
    opt_d = torch.optim.Adam(dense, lr=args.dense_lr, betas=BETAS, eps=args.adam_eps)
    # The same batches as ctr-train: BatchLoader's seeded permutation, rows [s*B, (s+1)*B).
    loader = BatchLoader(train, batch, shuffle=True, seed=args.seed, drop_last=args.drop_last)
    t_train, step, done = time.time(), 0, False
    for epoch in range(args.epochs):
        perm, loss_acc = loader.order(epoch), 0.0
        for s in range(len(loader)):
            if args.max_steps is not None and step >= args.max_steps:
                done = True
                break
            ids, dns, y = train.gather(perm[s * batch:(s + 1) * batch])
            loss = F.binary_cross_entropy_with_logits(model(ids, dns), y)
            opt_t.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            step += 1
            if args.adam_eps_form == "keras":  # Keras adds eps to sqrt(v) before bias correction
                for o in (opt_t, opt_d):
                    for g in o.param_groups:
                        g["eps"] = args.adam_eps / math.sqrt(1.0 - BETAS[1] ** step)
            opt_t.step()
            opt_d.step()
            loss_acc += loss.item()
            if (s + 1) % max(1, len(loader) // 10) == 0:
                print(f"epoch {epoch + 1} step {s + 1}/{len(loader)}: loss {loss_acc / max(1, len(loader) // 10):.4f} "
                      f"({time.time() - t_train:.0f} s)", flush=True)
                loss_acc = 0.0
        if done:
            break
    train_seconds = time.time() - t_train
    result = {**{f"test_{k}": v for k, v in evaluate(model, test, parse_batch(args.eval_batch)).items()},
              "train_seconds": train_seconds, "wall_seconds": time.time() - t_start, "steps": step,
              "command": "python tools/plain_deepfm.py " + shlex.join(sys.argv[1:])}
    print(f"test AUC {result['test_auc']:.4f} logloss {result['test_logloss']:.4f}; {step} steps, "
          f"train {train_seconds:.0f} s, wall {result['wall_seconds']:.0f} s "
          f"({torch.get_num_threads()} threads)\ncommand: {result['command']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
