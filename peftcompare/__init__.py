"""peftcompare: compare parameter-efficient fine-tuning methods on FLAN-T5, fairly and reproducibly."""
import os as _os

# libgomp workers spin for ~0.3 s by default when they wait for a peer; on a 2-core machine shared with
# any other busy process every operator then stalls (measured 60-180x slower on the tiny model, 5x on
# flan-t5-small; bench/bench_threads.py). A short spin costs nothing when idle. Read when torch loads.
_os.environ.setdefault("GOMP_SPINCOUNT", "20000")
__version__ = "0.1.0"
