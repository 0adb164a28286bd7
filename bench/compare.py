"""Training throughput, batch-1 latency and memory of fastnet against PyTorch and JAX.

    python bench/compare.py [--threads 2] [--seconds 3] [--workloads mlp_small_b32,...]

The same as ``fastnet bench`` (``python -m fastnet.bench``), whose options it takes, run on the
fastnet of the source tree this file is in (built in place); the runner and the network
definitions live in ``fastnet/bench.py``. See ``bench/README.md``.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(ROOT, "fastnet", "bench.py")):
    sys.path.insert(0, ROOT)

from fastnet.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
