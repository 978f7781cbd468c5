"""torchrun's entry point for ctr's workers: ``python -m ctr.distributed.run_worker MODULE ARGV``
runs ``python -m MODULE *json.loads(ARGV)``.

:func:`ctr.distributed.env.launch_workers` starts every worker through here rather than with
``torchrun ... -m MODULE *argv``, because torchrun's own argparse reads the worker's flags
too and takes one that abbreviates a torchrun option for its own: ``ctr-train --nproc 2
--r 0.5`` failed with "ambiguous option: --r could match --rdzv-backend, ...". One JSON
argument (it starts with ``[``) is never read as an option.

Example::

    python -m torch.distributed.run --nproc_per_node 2 -m ctr.distributed.run_worker \\
        ctr.cli.train '["--model", "deepfm", "--r", "0.5"]'
"""

from __future__ import annotations

import json
import runpy
import sys


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python -m ctr.distributed.run_worker MODULE ARGV_JSON")
    module, argv = sys.argv[1], json.loads(sys.argv[2])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        sys.exit("ctr.distributed.run_worker: ARGV_JSON must be a JSON list of strings")
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
