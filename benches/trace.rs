//! Fast vs naive causal tracing, and the matmul throughput that bounds both.
//! `cargo bench --bench trace` (SmolLM2 cases run when models/ holds it); on a GPU:
//! `BIASLENS_DEVICE=cuda cargo bench --features cuda --bench trace`. Tracing returns host
//! numbers, so every iteration already waits for the device; the matmul bench synchronises.

use biaslens::device::{device_name, test_device};
use biaslens::model::{Model, Transformer};
use biaslens::trace::{
    sample_noise, trace_fast, trace_naive, Kind, NoiseLevel, TraceCase, TraceSettings,
};
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use std::path::PathBuf;
use std::time::Duration;

fn bench_model(
    c: &mut Criterion,
    dev: &Device,
    name: &str,
    t: &Transformer,
    case: &TraceCase,
    samples: usize,
) {
    let settings = TraceSettings {
        samples,
        window: 10,
        kinds: Kind::ALL.to_vec(),
        noise: NoiseLevel::Fixed(0.4),
        seed: 0,
    };
    let noise = sample_noise(
        0,
        samples,
        case.subject.1 - case.subject.0,
        t.cfg.hidden_size,
        0.4,
        dev,
    )
    .unwrap();
    let mut g = c.benchmark_group(format!(
        "trace@{}/{name}",
        device_name(dev).replace(':', "")
    ));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("fast", |b| {
        b.iter(|| trace_fast(t, case, &noise, &settings).unwrap())
    });
    g.bench_function("naive", |b| {
        b.iter(|| trace_naive(t, case, &noise, &settings).unwrap())
    });
    g.finish();
}

fn tracing(c: &mut Criterion) {
    let dev = test_device();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tiny =
        Model::load_hf_dir("llama", &root.join("fixtures/reference/tiny/llama"), &dev).unwrap();
    let case = TraceCase {
        ids: vec![4, 8, 15, 16, 23, 42],
        subject: (1, 3),
        pronouns: [3, 7, 11],
    };
    bench_model(c, &dev, "tiny-llama", &tiny.transformer, &case, 10);
    if let Ok(m) = Model::load("smollm2-135m", &dev) {
        // "The nurse said that": 4 tokens, occupation token 1, 3 kinds x 4 tokens x 30 layers.
        let case = TraceCase {
            ids: vec![504, 12996, 1137, 338],
            subject: (1, 2),
            pronouns: [384, 1041, 502],
        };
        bench_model(c, &dev, "smollm2-135m", &m.transformer, &case, 10);
    }
}

/// f32 matmul throughput of candle on this machine: the peak the trace is measured against.
fn matmul_peak(c: &mut Criterion) {
    let dev = test_device();
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev).unwrap();
    let mut g = c.benchmark_group(format!("matmul@{}", device_name(&dev).replace(':', "")));
    g.throughput(criterion::Throughput::Elements((2 * n * n * n) as u64));
    g.bench_function("f32_1024", |bch| {
        bch.iter(|| {
            let y = a.matmul(&b).unwrap();
            dev.synchronize().unwrap();
            y
        })
    });
    g.finish();
}

criterion_group!(benches, matmul_peak, tracing);
criterion_main!(benches);
