//! The int4 codec's bound, layout and refusals, and error feedback for
//! every lossy codec.

use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};

use super::*;

fn rng(seed: u8) -> TestRng {
    TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32])
}

/// Standard normal samples (Box–Muller) times `scale`.
fn normal(rng: &mut TestRng, n: usize, scale: f32) -> Vec<f32> {
    let mut uniform = || (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
    (0..n)
        .map(|_| {
            let u = uniform().max(1e-7);
            let v = uniform();
            scale * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

const SIZES: &[usize] = &[1, 2, 3, 7, 255, 256, 257, 4097, CHUNK + 3, 3 * CHUNK + 1001];
const BLOCKS: &[u32] = &[1, 2, 3, 7, 64, 255, 256, 1000, 1 << 20];

/// Encode `x` with int4, decode it, and hold the result to the documented
/// bound: each stored scale is at least max|block|/7 and at most one ulp
/// above it, and every element is within scale·(1/2 + 2⁻¹⁹).
fn int4_checked(x: &[f32], block_size: u32) -> Vec<f32> {
    let codec = Codec::Int4 { block_size };
    let payload = encode(Values::F32(x), codec, None).unwrap();
    assert_eq!(payload.len(), codec.encoded_len(x.len()).unwrap());
    let y = decode(&payload, CodecId::Int4, Some(x.len())).unwrap();
    let scales = int4::scales_of(&payload);
    let b = block_size as usize;
    assert_eq!(scales.len(), x.len().div_ceil(b));
    for (blk, &s) in x.chunks(b).zip(&scales) {
        let max = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let exact = f64::from(max) / 7.0;
        // Only where 7·scale would overflow may the scale sit below max/7.
        let floor = if max > f32::MAX / 7.0 * 6.99 {
            exact * (1.0 - 2f64.powi(-22))
        } else {
            exact
        };
        assert!(f64::from(s) >= floor, "scale {s} below max {max} / 7");
        assert!(
            f64::from(s) <= exact * (1.0 + 2f64.powi(-22)) + 2f64.powi(-149),
            "scale {s} far above max {max} / 7"
        );
    }
    for (i, (a, b)) in x.iter().zip(&y).enumerate() {
        let s = f64::from(scales[i / block_size as usize]);
        let err = (f64::from(*a) - f64::from(*b)).abs();
        assert!(
            err <= s * (0.5 + 2f64.powi(-19)),
            "position {i}: {a} -> {b}, scale {s}"
        );
    }
    y
}

#[test]
fn int4_error_within_half_a_scale_for_any_size_and_block() {
    let mut r = rng(40);
    for &n in SIZES {
        for &block_size in BLOCKS {
            let mut x = normal(&mut r, n, 0.01);
            // Blocks of wildly different magnitude and some zero runs.
            for (i, v) in x.iter_mut().enumerate() {
                if (i / 300) % 3 == 1 {
                    *v *= 1e4;
                } else if (i / 300) % 7 == 2 {
                    *v = 0.0;
                }
            }
            int4_checked(&x, block_size);
        }
    }
}

#[test]
fn int4_adversarial_blocks() {
    // All equal: every element is the block maximum, sent as ±7·scale.
    let x = vec![-0.3f32; 1001];
    let y = int4_checked(&x, 64);
    assert!(y.iter().all(|&v| v == y[0] && (v + 0.3).abs() < 1e-7));
    // One huge outlier per block: the rest round to zero, within the bound.
    let mut x = vec![1e-3f32; 1000];
    for i in (0..1000).step_by(100) {
        x[i + 37] = 1e30;
    }
    let y = int4_checked(&x, 100);
    assert!(y
        .iter()
        .enumerate()
        .all(|(i, &v)| (i % 100 == 37) == (v != 0.0)));
    // Zeros are exact and have scale 0.
    let y = int4_checked(&[0.0; 33], 8);
    assert!(y.iter().all(|&v| v == 0.0));
    // The extremes of f32: finite out, no overflow of 7·scale.
    let y = int4_checked(&[f32::MAX, -f32::MAX, 1.0, 0.0, -1.0], 4);
    assert!(y.iter().all(|v| v.is_finite()) && y[0] > 0.0 && y[1] < 0.0);
    // Subnormal blocks, down to the smallest: the scale never rounds to 0.
    for bits in [1u32, 2, 3, 6, 7, 8, 60, 1 << 20] {
        let t = f32::from_bits(bits);
        let y = int4_checked(&[t, -t, t / 2.0, 0.0, t], 5);
        assert!(y[0] > 0.0 && y[1] < 0.0, "{t:e}: {y:?}");
    }
    // Exact halves of a step round to even levels (and stay in the bound).
    let x: Vec<f32> = (-14..=14).map(|i| i as f32 * 0.5).collect();
    let y = int4_checked(&x, x.len() as u32);
    assert_eq!(y[14], 0.0);
    assert_eq!((y[15], y[17]), (0.0, 2.0)); // 0.5 -> 0, 1.5 -> 2
}

#[test]
fn int4_layout_packs_two_levels_a_byte_low_nibble_first() {
    let x = [7.0f32, -7.0, 1.0, 0.0, 3.0];
    let payload = encode(Values::F32(&x), Codec::Int4 { block_size: 8 }, None).unwrap();
    let mut expected = 8u32.to_le_bytes().to_vec();
    expected.extend(5u64.to_le_bytes());
    expected.extend(1.0f32.to_le_bytes());
    expected.extend([0x97, 0x01, 0x03]); // (7, -7), (1, 0), (3, padding 0)
    assert_eq!(payload, expected);
    assert_eq!(decode(&payload, CodecId::Int4, None).unwrap(), x);
}

#[test]
fn int4_payload_sizes() {
    for (n, b) in [
        (1usize, 1usize),
        (1, 256),
        (2, 256),
        (5, 3),
        (256, 256),
        (257, 256),
        (1001, 7),
    ] {
        let len = 12 + 4 * n.div_ceil(b) + n.div_ceil(2);
        assert_eq!(
            Codec::Int4 {
                block_size: b as u32
            }
            .encoded_len(n),
            Ok(len)
        );
    }
    assert_eq!(max_encoded_len(CodecId::Int4, 5), 12 + 4 * 5 + 3);
}

fn codec_err(r: Result<Vec<f32>>, needle: &str) {
    match r {
        Err(Error::Codec(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a codec error containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn int4_malformed_payloads_get_errors_naming_the_problem() {
    let x: Vec<f32> = (0..9).map(|i| i as f32 - 4.5).collect();
    let good = encode(Values::F32(&x), Codec::Int4 { block_size: 4 }, None).unwrap();
    // 12 header + 3 scales + 5 bytes of levels.
    assert_eq!(good.len(), 12 + 12 + 5);
    codec_err(decode(&good[..5], CodecId::Int4, None), "truncated");
    codec_err(decode(&good[..good.len() - 1], CodecId::Int4, None), "need");
    codec_err(
        decode(&[good.clone(), vec![0]].concat(), CodecId::Int4, None),
        "need",
    );
    codec_err(decode(&good, CodecId::Int4, Some(10)), "expected 10");
    let mut bad = good.clone();
    bad[..4].copy_from_slice(&0u32.to_le_bytes());
    codec_err(
        decode(&bad, CodecId::Int4, None),
        "int4 payload has block_size 0",
    );
    let mut bad = good.clone();
    bad[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
    codec_err(decode(&bad, CodecId::Int4, None), "need");
    let mut bad = good.clone();
    bad[4..12].copy_from_slice(&0u64.to_le_bytes());
    codec_err(decode(&bad, CodecId::Int4, None), "0 elements");
    let mut bad = good.clone();
    bad[16..20].copy_from_slice(&f32::NAN.to_le_bytes());
    codec_err(decode(&bad, CodecId::Int4, None), "scale NaN for block 1");
    bad[16..20].copy_from_slice(&1e38f32.to_le_bytes()); // 7·scale overflows
    codec_err(decode(&bad, CodecId::Int4, None), "for block 1");
    bad[16..20].copy_from_slice(&(-1f32).to_le_bytes());
    codec_err(decode(&bad, CodecId::Int4, None), "invalid scale -1");
    // Element 7 is the high nibble of byte 3.
    let mut bad = good.clone();
    bad[24 + 3] = (bad[24 + 3] & 0x0f) | 0x80;
    codec_err(decode(&bad, CodecId::Int4, None), "-8 at position 7");
    // n = 9 is odd: the last byte's high nibble is padding.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] |= 0x10;
    codec_err(
        decode(&bad, CodecId::Int4, None),
        "padding nibble after element 8",
    );
}

#[test]
fn int4_refuses_non_finite_naming_the_position_across_tasks() {
    let mut x = vec![0.25f32; 2 * CHUNK + 11];
    x[CHUNK + 9] = f32::NEG_INFINITY;
    assert_eq!(
        encode(Values::F32(&x), Codec::Int4 { block_size: 33 }, None),
        Err(Error::NonFinite {
            update: 0,
            position: CHUNK + 9
        })
    );
}

// ---- error feedback ---------------------------------------------------------

const LOSSY: &[Codec] = &[
    Codec::Fp16,
    Codec::Bf16,
    Codec::Int8 { block_size: 64 },
    Codec::Int4 { block_size: 64 },
    Codec::Int4 { block_size: 33 },
    Codec::TopK { k: 40 },
];

/// One round: encode with the residual, decode; returns what was sent.
fn send(x: &[f32], codec: Codec, residual: &mut [f32]) -> Vec<f32> {
    let payload = encode(Values::F32(x), codec, Some(residual)).unwrap();
    decode(&payload, codec.id(), Some(x.len())).unwrap()
}

#[test]
fn error_feedback_loses_nothing_over_many_rounds_for_every_lossy_codec() {
    for (c, &codec) in LOSSY.iter().enumerate() {
        let mut r = rng(50 + c as u8);
        let n = 3000;
        let mut residual = vec![0f32; n];
        let (mut total_in, mut total_sent) = (vec![0f64; n], vec![0f64; n]);
        // Each round rounds x = update + residual to f32 once, off by at
        // most 2⁻²⁴·|x|; nothing else may go missing.
        let mut slack = vec![0f64; n];
        for round in 0..150 {
            // Small updates on a drifting scale, so fp16 flushes some to zero
            // and int4 rounds most of each block away.
            let x = normal(&mut r, n, 1e-6 * (1.0 + (round % 10) as f32));
            for i in 0..n {
                total_in[i] += f64::from(x[i]);
                slack[i] += (f64::from(x[i]).abs() + f64::from(residual[i]).abs()) * 2f64.powi(-23);
            }
            let sent = send(&x, codec, &mut residual);
            sent.iter()
                .zip(&mut total_sent)
                .for_each(|(a, t)| *t += f64::from(*a));
        }
        for i in 0..n {
            let kept = total_sent[i] + f64::from(residual[i]);
            assert!(
                (kept - total_in[i]).abs() <= slack[i],
                "{codec:?} coordinate {i}: sent + residual = {kept}, inputs sum to {}",
                total_in[i]
            );
        }
        assert!(
            residual.iter().any(|&v| v != 0.0),
            "{codec:?}: nothing lost at all?"
        );
    }
}

#[test]
fn error_feedback_keeps_what_is_below_the_codecs_resolution() {
    // 1e-9 is below half fp16's smallest subnormal, and far below int4's
    // step next to a 1.0 in the same block: without feedback it is dropped
    // every round; with it, it waits in the residual (and fp16 sends it
    // once enough has gathered).
    let tiny = 1e-9f32;
    let mut x = vec![tiny; 64];
    x[0] = 1.0;
    for codec in [Codec::Fp16, Codec::Int4 { block_size: 64 }] {
        let payload = encode(Values::F32(&x), codec, None).unwrap();
        assert_eq!(
            decode(&payload, codec.id(), None).unwrap()[1],
            0.0,
            "{codec:?}"
        );
        let mut residual = vec![0f32; 64];
        let mut arrived = 0f64;
        for _ in 0..200 {
            arrived += f64::from(send(&x, codec, &mut residual)[1]);
        }
        let total = 200.0 * f64::from(tiny);
        assert!(
            (arrived + f64::from(residual[1]) - total).abs() < 1e-6 * total,
            "{codec:?}"
        );
        assert_eq!(arrived > 0.0, codec == Codec::Fp16, "{codec:?}");
    }
}

#[test]
fn a_zero_residual_encodes_like_none_and_keeps_the_error() {
    let mut r = rng(60);
    let x = normal(&mut r, 2 * CHUNK + 77, 3.0);
    for &codec in LOSSY {
        let plain = encode(Values::F32(&x), codec, None).unwrap();
        let mut residual = vec![0f32; x.len()];
        let fed = encode(Values::F32(&x), codec, Some(&mut residual)).unwrap();
        assert_eq!(plain, fed, "{codec:?}");
        let y = decode(&fed, codec.id(), None).unwrap();
        for i in 0..x.len() {
            assert_eq!(residual[i], x[i] - y[i], "{codec:?} at {i}");
        }
    }
}

#[test]
fn refused_error_feedback_leaves_the_residual_untouched() {
    let x = [1.0f32, 2.0, 3.0, 4.0];
    for &codec in LOSSY {
        let codec = match codec {
            Codec::TopK { .. } => Codec::TopK { k: 2 },
            c => c,
        };
        let mut residual = vec![0.5f32, -0.25, f32::NAN, 0.0];
        let err = encode(Values::F32(&x), codec, Some(&mut residual));
        assert_eq!(
            err,
            Err(Error::NonFinite {
                update: 1,
                position: 2
            }),
            "{codec:?}"
        );
        assert_eq!(residual[..2], [0.5, -0.25]);
        let mut residual = vec![0.5f32; 4];
        let err = encode(
            Values::F32(&[1.0, 2.0, 3.0, f32::NAN]),
            codec,
            Some(&mut residual),
        );
        assert_eq!(
            err,
            Err(Error::NonFinite {
                update: 0,
                position: 3
            })
        );
        let err = encode(
            Values::F32(&[1.0, f32::MAX, 3.0, 4.0]),
            codec,
            Some(&mut [0.0, f32::MAX, 0.0, 0.0]),
        );
        assert!(
            matches!(&err, Err(Error::InvalidArgument(m) | Error::Codec(m)) if m.contains("position 1")),
            "{codec:?}: {err:?}"
        );
        assert_eq!(residual, [0.5; 4]);
        let mut short = vec![0f32; 3];
        assert!(matches!(
            encode(Values::F32(&x), codec, Some(&mut short)),
            Err(Error::ShapeMismatch { index: 1, .. })
        ));
    }
    // A sum beyond fp16's range is a codec error, and nothing moves.
    let mut residual = vec![0f32, 60000.0, 0.0, 0.0];
    let err = encode(
        Values::F32(&[0.0, 6000.0, 0.0, 0.0]),
        Codec::Fp16,
        Some(&mut residual),
    );
    assert!(matches!(err, Err(Error::Codec(m)) if m.contains("position 1") && m.contains("fp16")));
    assert_eq!(residual, [0.0, 60000.0, 0.0, 0.0]);
}

#[test]
fn error_feedback_takes_half_precision_updates() {
    let mut r = rng(61);
    let x = normal(&mut r, 5000, 2.0);
    let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
    for &codec in LOSSY {
        let mut r16 = normal(&mut r, 5000, 0.1);
        let mut r32 = r16.clone();
        let a = encode(Values::F16(&h), codec, Some(&mut r16)).unwrap();
        let b = encode(Values::F32(&hf), codec, Some(&mut r32)).unwrap();
        assert_eq!(a, b, "{codec:?}");
        assert_eq!(r16, r32, "{codec:?}");
    }
}

fn small_update() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-1e3f32..1e3f32, 1..200)
}

fn any_lossy() -> impl Strategy<Value = Codec> {
    (0usize..5, 1u32..64, 0.0f64..1.0).prop_map(|(c, block_size, kf)| match c {
        0 => Codec::Fp16,
        1 => Codec::Bf16,
        2 => Codec::Int8 { block_size },
        3 => Codec::Int4 { block_size },
        // k is scaled to the input by the test.
        _ => Codec::TopK {
            k: (kf * 1e6) as u64,
        },
    })
}

/// Any finite f32, subnormals and zeros included.
fn any_finite() -> impl Strategy<Value = f32> {
    prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO
}

proptest! {
    #[test]
    fn int4_bound_holds_for_any_input(x in small_update(), block in 1u32..64) {
        int4_checked(&x, block);
    }

    #[test]
    fn int4_bound_holds_for_any_finite_values(
        x in prop::collection::vec(any_finite(), 1..100),
        block in 1u32..16,
    ) {
        int4_checked(&x, block);
    }

    #[test]
    fn feedback_conserves_mass_each_round(
        x in small_update(),
        r0 in small_update(),
        codec in any_lossy(),
    ) {
        let n = x.len().min(r0.len());
        let (x, mut residual) = (&x[..n], r0[..n].to_vec());
        let codec = match codec {
            Codec::TopK { k } => Codec::TopK { k: (k % n as u64).max(1) },
            c => c,
        };
        let sent = send(x, codec, &mut residual);
        for i in 0..n {
            prop_assert_eq!(sent[i] + residual[i], x[i] + r0[i], "{:?} at {}", codec, i);
        }
    }
}
