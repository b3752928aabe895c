#!/usr/bin/env python3
"""Separate vs stacked-weight products at SmolLM2 and Gemma-3 layer shapes (q/k/v, gate/up), in
PyTorch on this CPU: does fusing the projections pay? (docs/performance.md, "Evaluation").
Run with the Python of harness/vs-pytorch.sh's venv ($VS_VENV, default /tmp/biaslens-torch-venv;
the script needs torch only): $VS_VENV/bin/python harness/fused-products-bench.py.
Stop other work first; prints the median of five runs of 30 products each."""
import torch, time, statistics
def t(f, n=30):
    f()
    s=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-s)/n
for threads in (1,2):
    torch.set_num_threads(threads)
    for name,(d,qo,kvo,ff) in {"smollm2":(576,576,192,1536),"gemma3":(640,1024,256,2048)}.items():
        torch.manual_seed(0)
        x=torch.randn(2048,d)
        wq,wk,wv=torch.randn(qo,d),torch.randn(kvo,d),torch.randn(kvo,d)
        wqkv=torch.cat([wq,wk,wv]).T.contiguous().T
        wg,wu=torch.randn(ff,d),torch.randn(ff,d); wgu=torch.cat([wg,wu])
        r={"qkv_sep":[], "qkv_fused":[], "gu_sep":[], "gu_fused":[]}
        for rep in range(5):
            r["qkv_sep"].append(t(lambda:(x@wq.T, x@wk.T, x@wv.T)))
            r["qkv_fused"].append(t(lambda: x@wqkv.T))
            r["gu_sep"].append(t(lambda:(x@wg.T, x@wu.T)))
            r["gu_fused"].append(t(lambda: x@wgu.T))
        m={k:statistics.median(v)*1e3 for k,v in r.items()}
        print(f"{name} threads {threads}: q/k/v separate {m['qkv_sep']:.2f} ms, fused {m['qkv_fused']:.2f} ms ({m['qkv_sep']/m['qkv_fused']:.3f}x); gate/up separate {m['gu_sep']:.2f} ms, fused {m['gu_fused']:.2f} ms ({m['gu_sep']/m['gu_fused']:.3f}x)")
print(f"torch {torch.__version__}, MKL available: {torch.backends.mkl.is_available()}")
