"""Detection decoders: a network's raw detection tensors to boxes and per-label scores.

Each decoder ends where `direct_output` starts: boxes `[N, 4]` as (xmin, ymin, xmax, ymax) normalized on the
network input, and scores `[N, K]`, one column per spec label. Thresholds, NMS and the mapping back to the
original image are then shared (engine.postprocess).
"""
