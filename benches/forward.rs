//! Batched forward (64 prompts × 8 tokens) on SmolLM2 and the f32 matmul shapes it runs, so the
//! forward's time can be read against the machine's matmul throughput: `model::matmul::x_wt`,
//! the eval path's product (candle's gemm, with its AVX-512 kernels where the CPU has them; MKL
//! with `--features mkl`).
//! `cargo bench --bench forward` (needs `harness/fetch-models.sh smollm2-135m`); on a GPU:
//! `BIASLENS_DEVICE=cuda cargo bench --features cuda --bench forward`. Every timed iteration
//! ends with a device synchronisation, so asynchronous CUDA launches are not mistaken for work.

use biaslens::device::test_device;
use biaslens::model::{InterventionPlan, LogitsRequest, Model};
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn forward(c: &mut Criterion) {
    let dev = test_device();
    let model = match Model::load("smollm2-135m", &dev) {
        Ok(m) => m,
        Err(e) => panic!("{e}\nrun harness/fetch-models.sh smollm2-135m first"),
    };
    let rows: Vec<Vec<u32>> = (0..64u32)
        .map(|i| (0..8u32).map(|j| 100 + 37 * i + j).collect())
        .collect();
    let plan = InterventionPlan::logits(LogitsRequest::LastTokenIds(vec![384, 1041, 502]));
    let mut g = c.benchmark_group(format!("forward@{}", device_label(&dev)));
    g.sample_size(10);
    g.throughput(Throughput::Elements(64 * 8));
    g.bench_function("smollm2_64x8_pronoun_logits", |b| {
        b.iter(|| {
            let out = model.transformer.forward(&rows, &plan).expect("forward");
            // Copying the [64, 3] result to the host waits for the device.
            out.logprobs.map(|t| t.to_vec2::<f32>().expect("to host"))
        })
    });
    g.finish();

    // The matmuls of one SmolLM2 layer at 512 tokens: q/o, k/v, gate/up, down.
    let mut g = c.benchmark_group(format!("matmul_f32@{}", device_label(&dev)));
    g.sample_size(10);
    for (name, k, n) in [
        ("qo_576x576", 576, 576),
        ("kv_576x192", 576, 192),
        ("up_576x1536", 576, 1536),
        ("down_1536x576", 1536, 576),
    ] {
        let x = Tensor::randn(0f32, 1.0, (512, k), &dev)
            .and_then(|t| t.to_dtype(DType::F32))
            .expect("x");
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).expect("w");
        g.throughput(Throughput::Elements((2 * 512 * k * n) as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let y = biaslens::model::matmul::x_wt(&x, &w, true).expect("matmul");
                dev.synchronize().expect("synchronize");
                y
            })
        });
    }
    g.finish();
}

fn device_label(d: &Device) -> String {
    biaslens::device::device_name(d).replace(':', "")
}

criterion_group!(benches, forward);
criterion_main!(benches);
