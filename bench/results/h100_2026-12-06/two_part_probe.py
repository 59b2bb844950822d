"""One-off probe run on an H100 on 2026-12-06 (output in two_part_probe.txt): two key parts in one
decode_partials launch against one launch each, both captured in a CUDA graph, partials only (no merge).
bench/decode_kernel.py --second-keys now measures the same comparison, merge included. (Reformatted for
the linter after it ran; the statements are the ones that ran.)"""

import torch
import triton

from ksa.triton_decode import decode_partials

torch.manual_seed(0)


def graphed(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def mk(n, h, s, d):
    return (torch.randn(n, h, s, d, device="cuda", dtype=torch.bfloat16),
            torch.randn(n, h, s, d, device="cuda", dtype=torch.bfloat16), torch.zeros(n, 1, 1, s, device="cuda"))  # fmt: skip


for n, m, s1, s2 in [(2, 16, 1024, 4096), (2, 32, 1024, 4096), (16, 16, 1024, 256), (16, 2, 1024, 4096)]:
    h, d = 8, 128
    q = torch.randn(n, h, m, d, device="cuda", dtype=torch.bfloat16)
    a, b = mk(n, h, s1, d), mk(n, h, s2, d)

    def one(q=q, a=a, b=b, m=m):
        return decode_partials(q, *a, 0.088, m, 1, k2=b[0], v2=b[1], bias2=b[2])

    def two(q=q, a=a, b=b, m=m):
        return decode_partials(q, *a, 0.088, m, 1), decode_partials(q, *b, 0.088, m, 1)

    t1 = triton.testing.do_bench(graphed(one), warmup=50, rep=200)
    t2 = triton.testing.do_bench(graphed(two), warmup=50, rep=200)
    print(f"CUDA graph: rows {n} queries {m} keys {s1}+{s2}: one launch {t1 * 1e3:.1f} us, "
          f"two launches {t2 * 1e3:.1f} us, gain {t2 / t1:.2f}")  # fmt: skip
