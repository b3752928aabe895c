//! A CPU matmul whose bits depend on its inputs only, not on the machine.
//!
//! candle's CPU matmul (the `gemm` crate) splits the contraction into blocks of `kc` sized from
//! the L1 data cache it reads at start-up (`max(512, …)`: 512 on a 32 KiB 8-way L1, 1024 on a
//! 48 KiB 12-way one) and adds the blocks' partial products. A contraction of 576 is one block
//! on an Intel Xeon and two of 288 on an AMD EPYC, so the same product rounds differently and
//! the snapshot tables moved in their 4th digit between the two. A contraction of at most
//! [`CHUNK`] is never split on any machine, and within a block gemm's packed kernels compute
//! every output as one sequential fused-multiply-add sum whatever their vector width (AVX2 or
//! AVX-512). So [`matmul`] splits every contraction into at most [`CHUNK`]-long pieces and adds
//! them in a fixed order, and steers each piece away from the paths that reduce along the
//! contraction in SIMD lanes of the CPU's width (`piece`): dot-product layouts (a row-major
//! left operand and a column-major right one) with one output row, one output column or at
//! most 16 × 16 outputs. Thread counts only decide which thread computes which output tile.
//!
//! When gradients are tracked, each piece is the custom op `Piece`, whose backward computes
//! its two products (`grad · bᵀ` over the output columns, `aᵀ · grad` over the rows) with
//! [`stable`] again, so gradients are machine-independent too; candle's own backward would
//! call gemm directly.
//!
//! Tested bit for bit against a scalar sequential-FMA reference (below), and end to end by
//! `harness/cross-cpu-check.sh`, which reruns tests under an emulated Intel cache geometry.
//! On other devices this is candle's matmul. With the `mkl` feature, [`matmul`] hands products
//! that track no gradient to MKL (`super::mkl`), whose bits depend on the CPU; [`stable`] is the
//! machine-independent product in either build.

use crate::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

/// The longest contraction the `gemm` crate never splits (its smallest `kc`).
pub const CHUNK: usize = 512;

/// gemm's "horizontal" kernels take dot-product layouts with at most this many outputs.
const SMALL_OUTPUT: usize = 16 * 16;

/// `a [.., m, k] · b [.., k, n]`, like `Tensor::matmul`, with a machine-independent result on
/// the CPU.
///
/// With the `mkl` feature, products that track no gradient go to MKL instead (`model::mkl`),
/// and their bits depend on the machine.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "mkl")]
    if let Some(out) = super::mkl::matmul(a, b)? {
        return Ok(out);
    }
    stable(a, b)
}

/// The machine-independent product itself: [`matmul`] without the `mkl` feature, and still what
/// products that track a gradient take with it.
pub fn stable(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !a.device().is_cpu() {
        return Ok(a.matmul(b)?);
    }
    let rank = a.rank();
    if rank < 2 || b.rank() != rank {
        // Let candle report the shape error.
        return Ok(a.matmul(b)?);
    }
    let (m, k) = (a.dim(rank - 2)?, a.dim(rank - 1)?);
    let n = b.dim(rank - 1)?;
    if n == 1 {
        return one_column(a, b, m, rank);
    }
    chunked(a, b, &spans(k), rank)
}

/// `a · b` where `b` has one column. gemm reduces such a product along k in SIMD lanes (8 with
/// AVX2, 16 with AVX-512), so its bits would depend on the CPU; as the one-row product
/// `(bᵀ · aᵀ)ᵀ`, both operands row-major, every output is one sequential sum again, as for
/// every other shape. A single
/// output (`m` = 1 too) gets a zero second column for the same reason.
fn one_column(a: &Tensor, b: &Tensor, m: usize, rank: usize) -> Result<Tensor> {
    let (r, c) = (rank - 2, rank - 1);
    if m > 1 {
        // Contiguous: with a column-major right operand gemm would take dot products again.
        let (bt, at) = (
            b.transpose(r, c)?.contiguous()?,
            a.transpose(r, c)?.contiguous()?,
        );
        let out = stable(&bt, &at)?;
        return Ok(out.transpose(r, c)?.contiguous()?);
    }
    let b2 = Tensor::cat(&[b, &b.zeros_like()?], c)?;
    Ok(stable(a, &b2)?.narrow(c, 0, 1)?.contiguous()?)
}

/// `Σ_c a[.., :, c] · b[.., c, :]` over the contraction spans, added left to right.
fn chunked(a: &Tensor, b: &Tensor, k_spans: &[(usize, usize)], rank: usize) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for &(k0, kl) in k_spans {
        let p = piece(
            &a.narrow(rank - 1, k0, kl)?,
            &b.narrow(rank - 2, k0, kl)?,
            rank,
        )?;
        acc = Some(match acc {
            None => p,
            Some(s) => (s + p)?,
        });
    }
    acc.ok_or_else(|| crate::Error::Model("stable_matmul: empty contraction".into()))
}

/// One product with a contraction of at most [`CHUNK`] and at least two output columns.
///
/// gemm reduces along k in SIMD lanes (so its bits depend on the vector width) when the left
/// operand's columns and the right operand's rows are unit-strided (a dot-product layout) and
/// the output is one row or at most [`SMALL_OUTPUT`] entries. Such a small product gets a
/// row-major copy of its right operand (cheap: at most 256 columns); a one-row product with
/// more columns gets a zero second row instead (the packed kernel then runs, and the right
/// operand, say a transposed unembedding, is not copied twice).
fn piece(a: &Tensor, b: &Tensor, rank: usize) -> Result<Tensor> {
    let (m, k, n) = (a.dim(rank - 2)?, a.dim(rank - 1)?, b.dim(rank - 1)?);
    let dot_layout = k > 2 && a.stride()[rank - 1] == 1 && b.stride()[rank - 2] == 1;
    if dot_layout && m * n <= SMALL_OUTPUT {
        return product(a, &b.contiguous()?);
    }
    if dot_layout && m == 1 {
        let a2 = Tensor::cat(&[a, &a.zeros_like()?], rank - 2)?;
        return Ok(product(&a2, b)?.narrow(rank - 2, 0, 1)?);
    }
    product(a, b)
}

/// gemm's product, through [`Piece`] when a gradient will be asked of it.
fn product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.track_op() || b.track_op() {
        Ok(a.apply_op2(b, Piece)?)
    } else {
        Ok(a.matmul(b)?)
    }
}

/// One piece of a tracked product: gemm forward (the caller has steered the layout), backward
/// through [`stable`], so the gradient's products are machine-independent as well.
struct Piece;

impl CustomOp2 for Piece {
    fn name(&self) -> &'static str {
        "stable-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (d1, d2) = (l1.dims(), l2.dims());
        let rank = d1.len();
        let (m, k, n) = (d1[rank - 2], d1[rank - 1], d2[rank - 1]);
        let batch: usize = d1[..rank - 2].iter().product();
        let out = s1.matmul(s2, (batch, m, n, k), l1, l2)?;
        Ok((out, Shape::from(&d1[..rank - 2]).extend(&[m, n])))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let msg = |e: crate::Error| candle_core::Error::Msg(format!("stable_matmul backward: {e}"));
        let grad = grad.detach();
        let ga = match a.track_op() {
            true => Some(stable(&grad, &b.detach().t()?).map_err(msg)?),
            false => None,
        };
        let gb = match b.track_op() {
            true => Some(stable(&a.detach().t()?, &grad).map_err(msg)?),
            false => None,
        };
        Ok((ga, gb))
    }
}

/// `len` split into the fewest near-equal spans of at most [`CHUNK`]: `(start, length)`.
fn spans(len: usize) -> Vec<(usize, usize)> {
    let pieces = len.div_ceil(CHUNK).max(1);
    let base = len / pieces;
    let extra = len % pieces;
    let mut out = Vec::with_capacity(pieces);
    let mut start = 0;
    for i in 0..pieces {
        let l = base + usize::from(i < extra);
        out.push((start, l));
        start += l;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn data(len: usize, seed: u32) -> Vec<f32> {
        // A deterministic spread of magnitudes and signs, so rounding order matters.
        (0..len)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x as f32 / (1u32 << 24) as f32 - 0.5) * (1.0 + (i % 7) as f32)
            })
            .collect()
    }

    /// The definition: each output is a sequential FMA sum within each span, spans added in
    /// order. Any machine must produce exactly these bits.
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut total: Option<f32> = None;
                for (k0, kl) in spans(k) {
                    let mut s = 0f32;
                    for kk in k0..k0 + kl {
                        s = a[i * k + kk].mul_add(b[kk * n + j], s);
                    }
                    total = Some(total.map_or(s, |t| t + s));
                }
                out[i * n + j] = total.unwrap_or(0.0);
            }
        }
        out
    }

    #[test]
    fn spans_cover_and_respect_the_chunk() {
        for len in [1, 511, 512, 513, 576, 1024, 1536, 2048, 49_152] {
            let s = spans(len);
            assert_eq!(s.iter().map(|x| x.1).sum::<usize>(), len);
            assert!(s.iter().all(|x| x.1 <= CHUNK && x.1 > 0));
            assert!(s.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        }
    }

    #[test]
    fn bit_identical_to_the_sequential_fma_definition() {
        let dev = Device::Cpu;
        // Shapes of the kind the model and the edits use: contractions below, at and above the
        // chunk, rows from one (gemv) to hundreds.
        for &(m, k, n) in &[
            (1, 576, 192),
            (192, 576, 1),
            (576, 576, 1),
            (2048, 512, 1),
            (1, 1536, 1),
            (3, 64, 7),
            (17, 576, 1536),
            (130, 1536, 576),
            (70, 1100, 96),
            (96, 2048, 40),
        ] {
            let (av, bv) = (data(m * k, 1), data(k * n, 2));
            let a = Tensor::from_vec(av.clone(), (m, k), &dev).unwrap();
            let b = Tensor::from_vec(bv.clone(), (k, n), &dev).unwrap();
            let got: Vec<f32> = stable(&a, &b)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = reference(&av, &bv, m, k, n);
            let differ = got
                .iter()
                .zip(&want)
                .filter(|(g, w)| g.to_bits() != w.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "({m}, {k}, {n}): {differ} outputs differ in bits"
            );
        }
    }

    #[test]
    fn one_thread_and_three_give_the_same_bits() {
        let (m, k, n) = (300, 1536, 576);
        let (av, bv) = (data(m * k, 8), data(k * n, 9));
        let run = |threads: usize| -> Vec<f32> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let a = Tensor::from_vec(av.clone(), (m, k), &Device::Cpu).unwrap();
                let b = Tensor::from_vec(bv.clone(), (k, n), &Device::Cpu).unwrap();
                stable(&a, &b)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
        };
        let (one, three) = (run(1), run(3));
        assert!(one
            .iter()
            .zip(&three)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn one_column_products_match_the_definition_as_views_and_batches() {
        let dev = Device::Cpu;
        let (m, k) = (150, 1100);
        let (av, bv) = (data(2 * m * k, 5), data(2 * k, 6));
        let want = |i: usize| {
            reference(
                &av[i * m * k..(i + 1) * m * k],
                &bv[i * k..(i + 1) * k],
                m,
                k,
                1,
            )
        };
        let bits = |t: Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        let a = Tensor::from_vec(av.clone(), (2, m, k), &dev).unwrap();
        let b = Tensor::from_vec(bv.clone(), (2, k, 1), &dev).unwrap();
        let batched = bits(stable(&a, &b).unwrap());
        let both: Vec<u32> = want(0)
            .iter()
            .chain(&want(1))
            .map(|x| x.to_bits())
            .collect();
        assert!(batched == both, "batched one-column product");
        // x · wᵀ with a one-row weight: `b` is a transposed view.
        let a0 = a.get(0).unwrap();
        let w = Tensor::from_vec(bv[..k].to_vec(), (1, k), &dev).unwrap();
        let viewed = bits(stable(&a0, &w.t().unwrap()).unwrap());
        assert!(
            viewed == want(0).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "x·wᵀ"
        );
    }

    #[test]
    fn transposed_and_batched_operands_match_the_definition() {
        let dev = Device::Cpu;
        let (m, k, n) = (40, 700, 33);
        let (av, bv) = (data(m * k, 3), data(k * n, 4));
        let a = Tensor::from_vec(av.clone(), (m, k), &dev).unwrap();
        // b stored as [n, k] and transposed, as the projections are used.
        let bt = Tensor::from_vec(bv.clone(), (k, n), &dev)
            .unwrap()
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
        let got: Vec<f32> = stable(&a, &bt.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, reference(&av, &bv, m, k, n));
        let a3 = Tensor::stack(&[&a, &a], 0).unwrap();
        let b3 = Tensor::stack(&[&bt.t().unwrap(), &bt.t().unwrap()], 0).unwrap();
        let got3: Vec<f32> = stable(&a3, &b3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got3[..m * n], got[..]);
        assert_eq!(got3[m * n..], got[..]);
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// `[rows, cols]` of `v` (row-major) transposed, row-major.
    fn transposed(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols)
            .flat_map(|j| (0..rows).map(move |i| v[i * cols + j]))
            .collect()
    }

    #[test]
    fn dot_product_layouts_match_the_definition() {
        // A row-major left operand times a column-major right one: gemm's lane-reducing paths
        // (one row, or at most 16 × 16 outputs) unless `piece` steers them away.
        let dev = Device::Cpu;
        for &(m, k, n) in &[
            (1, 576, 700),
            (1, 64, 9),
            (4, 64, 16),
            (16, 576, 16),
            (2, 1100, 5),
        ] {
            let (av, bv) = (data(m * k, 11), data(k * n, 12));
            let a = Tensor::from_vec(av.clone(), (m, k), &dev).unwrap();
            let bt = Tensor::from_vec(transposed(&bv, k, n), (n, k), &dev).unwrap();
            let got = values(&stable(&a, &bt.t().unwrap()).unwrap());
            assert_eq!(got, reference(&av, &bv, m, k, n), "({m}, {k}, {n})");
        }
        // Attention's q · kᵀ: [heads, t, d] · [heads, d, t] with the keys transposed.
        let (h, t, d) = (3, 7, 64);
        let (qv, kv) = (data(h * t * d, 13), data(h * t * d, 14));
        let q = Tensor::from_vec(qv.clone(), (h, t, d), &dev).unwrap();
        let keys = Tensor::from_vec(kv.clone(), (h, t, d), &dev).unwrap();
        let got = values(&stable(&q, &keys.transpose(1, 2).unwrap()).unwrap());
        for i in 0..h {
            let (qs, ks) = (
                &qv[i * t * d..(i + 1) * t * d],
                &kv[i * t * d..(i + 1) * t * d],
            );
            let want = reference(qs, &transposed(ks, t, d), t, d, t);
            assert_eq!(got[i * t * t..(i + 1) * t * t], want[..], "head {i}");
        }
    }

    #[test]
    fn tracked_products_and_their_gradients_match_the_definition() {
        // y = a · btᵀ, loss = Σ y ⊙ g: dL/da = g · bt and dL/dbt = gᵀ · a, each the definition's
        // bits (contractions over n = 10 and m = 600, the latter split at the chunk).
        let dev = Device::Cpu;
        let (m, k, n) = (600, 70, 10);
        let (av, btv, gv) = (data(m * k, 15), data(n * k, 16), data(m * n, 17));
        let a = Var::from_vec(av.clone(), (m, k), &dev).unwrap();
        let bt = Var::from_vec(btv.clone(), (n, k), &dev).unwrap();
        let g = Tensor::from_vec(gv.clone(), (m, n), &dev).unwrap();
        let y = stable(a.as_tensor(), &bt.as_tensor().t().unwrap()).unwrap();
        assert_eq!(values(&y), reference(&av, &transposed(&btv, n, k), m, k, n));
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |v: &Var| values(grads.get(v).unwrap());
        assert_eq!(flat(&a), reference(&gv, &btv, m, n, k), "dL/da");
        // dL/db = aᵀ · g ([k, n]); bt's gradient is its transpose.
        let gb = reference(&transposed(&av, m, k), &gv, k, m, n);
        assert_eq!(flat(&bt), transposed(&gb, k, n), "dL/dbt");
    }

    #[test]
    fn attention_shaped_gradients_avoid_the_lane_reducing_path() {
        // y = p · v as in attention (p the [t, t'] probabilities, v [t', d]): candle's own
        // backward computes dL/dp = g · vᵀ with a row-major g and a column-major vᵀ and only
        // 7 × 9 outputs, gemm's "horizontal" kernel, which sums along d in SIMD lanes. Through
        // `Piece` it is the definition's sequential sum.
        let dev = Device::Cpu;
        let (t, t2, d) = (7, 9, 64);
        let (pv, vv, gv) = (data(t * t2, 21), data(t2 * d, 22), data(t * d, 23));
        let p = Var::from_vec(pv, (t, t2), &dev).unwrap();
        let v = Tensor::from_vec(vv.clone(), (t2, d), &dev).unwrap();
        let g = Tensor::from_vec(gv.clone(), (t, d), &dev).unwrap();
        let y = stable(p.as_tensor(), &v).unwrap();
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let got = values(grads.get(&p).unwrap());
        assert_eq!(got, reference(&gv, &transposed(&vv, t2, d), t, d, t2));
    }

    #[test]
    fn gradients_match_the_definition_of_both_backward_products() {
        let dev = Device::Cpu;
        let (m, k, n) = (600, 520, 530);
        let (av, bv, gv) = (data(m * k, 5), data(k * n, 6), data(m * n, 7));
        let a = Var::from_vec(av.clone(), (m, k), &dev).unwrap();
        let b = Var::from_vec(bv.clone(), (k, n), &dev).unwrap();
        let g = Tensor::from_vec(gv.clone(), (m, n), &dev).unwrap();
        let y = stable(a.as_tensor(), b.as_tensor()).unwrap();
        let loss = (y * &g).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let ga: Vec<f32> = grads
            .get(&a)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let gb: Vec<f32> = grads
            .get(&b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // dL/da = g · bᵀ (contraction over n), dL/db = aᵀ · g (over m): compare with f64 sums
        // (the tiling decides the bits; here the values must be the product's gradient).
        let (mut worst_a, mut worst_b) = (0f64, 0f64);
        for i in (0..m).step_by(37) {
            for kk in (0..k).step_by(29) {
                let w: f64 = (0..n)
                    .map(|j| gv[i * n + j] as f64 * bv[kk * n + j] as f64)
                    .sum();
                worst_a = worst_a.max((ga[i * k + kk] as f64 - w).abs() / (1.0 + w.abs()));
            }
        }
        for kk in (0..k).step_by(31) {
            for j in (0..n).step_by(23) {
                let w: f64 = (0..m)
                    .map(|i| av[i * k + kk] as f64 * gv[i * n + j] as f64)
                    .sum();
                worst_b = worst_b.max((gb[kk * n + j] as f64 - w).abs() / (1.0 + w.abs()));
            }
        }
        assert!(worst_a < 1e-4 && worst_b < 1e-4, "{worst_a} {worst_b}");
    }
}
