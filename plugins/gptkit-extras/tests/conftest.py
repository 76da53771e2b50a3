import os

# Before torch is imported: the tiny test models run fastest on one thread (as gptkit's own suite does).
os.environ.setdefault("OMP_NUM_THREADS", "1")
